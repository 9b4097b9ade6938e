// A plain fuzzing driver for the LLVMFuzzerTestOneInput targets in this folder, for toolchains
// without libFuzzer (it needs nothing but the sanitizers of GCC or Clang). Deterministic: the
// same seed, corpus and iteration count run the same inputs.
//
//   fuzz_NAME [--iterations N] [--seconds S] [--seed K] [--max-len BYTES] [--findings DIR] CORPUS...
//
// Every corpus file (or every file of a corpus folder) runs once as it is, then N mutated inputs
// (bit flips, interesting bytes and little-endian integers, inserted/erased/duplicated ranges,
// digit runs turned into huge or negative numbers, splices of two corpus inputs) run until N or S
// is reached. A target signals a finding by crashing (sanitizers abort) or by letting an
// exception other than osp::Error escape; the input is then written to the findings folder
// (default fuzz-findings/) and the driver exits with 1.
//
// The targets use libFuzzer's entry point, so with clang one can also link a fuzz_NAME.cpp with
// -fsanitize=fuzzer instead of this driver (scripts/fuzz.sh does not: it needs only GCC).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <typeinfo>
#include <vector>

#if defined(__has_include)
#if __has_include(<sanitizer/common_interface_defs.h>)
#include <sanitizer/common_interface_defs.h>
#define OSP_HAVE_SANITIZER_API 1
#endif
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace fs = std::filesystem;

namespace {

using Input = std::vector<uint8_t>;

struct Rng {  // xorshift64*: small, deterministic, good enough to pick mutations
  uint64_t s;
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1DULL;
  }
  size_t below(size_t n) { return n ? size_t(next() % n) : 0; }
};

// The input being run, for the crash handlers (they write it out before the process dies).
const Input* g_current = nullptr;
std::string g_findings = "fuzz-findings";
std::string g_name = "fuzz";

std::string save_current(const char* why) {
  if (!g_current) return "";
  std::error_code ec;
  fs::create_directories(g_findings, ec);
  const std::string path = g_findings + "/" + g_name + "-" + why + "-" + std::to_string(::getpid()) + ".bin";
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(g_current->data()), std::streamsize(g_current->size()));
  return path;
}

void on_death() {
  const std::string p = save_current("crash");
  std::fprintf(stderr, "fuzz: FINDING (crash); input saved to %s\n", p.c_str());
}

extern "C" void on_signal(int sig) {
  on_death();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void mutate(Input& in, const std::vector<Input>& corpus, Rng& r, size_t max_len) {
  static const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xff, '"', '{', '}', '[', ']', ',', ':', '-', '9', 'e'};
  static const uint64_t ints[] = {0, 1, 0x7f, 0xff, 0x7fff, 0xffff, 0x7fffffffULL, 0xffffffffULL,
                                  0x100000000ULL, 0x7fffffffffffffffULL, 0xffffffffffffffffULL, 0x8000000000000000ULL};
  static const char* numbers[] = {"0", "-1", "4294967297", "1e308", "-9223372036854775809", "18446744073709551616",
                                  "1.5", "NaN", "\"7\"", "[]", "{}", "null"};
  const int n_mut = 1 + int(r.below(4));
  for (int m = 0; m < n_mut; ++m) {
    switch (r.below(9)) {
      case 0:  // flip a bit
        if (!in.empty()) in[r.below(in.size())] ^= uint8_t(1u << r.below(8));
        break;
      case 1:  // an interesting byte
        if (!in.empty()) in[r.below(in.size())] = bytes[r.below(sizeof bytes)];
        break;
      case 2: {  // an interesting little-endian integer (sizes, offsets, counts)
        const int w = r.below(2) ? 8 : 4;
        if (in.size() < size_t(w)) break;
        const size_t at = r.below(in.size() - w + 1);
        const uint64_t v = ints[r.below(sizeof ints / sizeof ints[0])];
        for (int i = 0; i < w; ++i) in[at + i] = uint8_t(v >> (8 * i));
        break;
      }
      case 3: {  // insert random bytes
        const size_t at = r.below(in.size() + 1), len = 1 + r.below(16);
        Input add(len);
        for (auto& b : add) b = uint8_t(r.next());
        in.insert(in.begin() + long(at), add.begin(), add.end());
        break;
      }
      case 4: {  // erase a range
        if (in.empty()) break;
        const size_t at = r.below(in.size()), len = 1 + r.below(std::min<size_t>(in.size() - at, 64));
        in.erase(in.begin() + long(at), in.begin() + long(at + len));
        break;
      }
      case 5: {  // duplicate a range
        if (in.empty()) break;
        const size_t at = r.below(in.size()), len = 1 + r.below(std::min<size_t>(in.size() - at, 64));
        const Input piece(in.begin() + long(at), in.begin() + long(at + len));
        in.insert(in.begin() + long(r.below(in.size() + 1)), piece.begin(), piece.end());
        break;
      }
      case 6: {  // a digit run (JSON numbers, sizes in text) becomes something hostile
        std::vector<size_t> starts;
        for (size_t i = 0; i < in.size(); ++i)
          if (in[i] >= '0' && in[i] <= '9' && (i == 0 || !(in[i - 1] >= '0' && in[i - 1] <= '9'))) starts.push_back(i);
        if (starts.empty()) break;
        const size_t a = starts[r.below(starts.size())];
        size_t b = a;
        while (b < in.size() && in[b] >= '0' && in[b] <= '9') ++b;
        const char* s = numbers[r.below(sizeof numbers / sizeof numbers[0])];
        in.erase(in.begin() + long(a), in.begin() + long(b));
        in.insert(in.begin() + long(a), s, s + std::strlen(s));
        break;
      }
      case 7: {  // splice with another corpus input
        const Input& o = corpus[r.below(corpus.size())];
        if (o.empty()) break;
        const size_t from = r.below(o.size()), len = 1 + r.below(o.size() - from);
        const size_t at = r.below(in.size() + 1);
        in.insert(in.begin() + long(at), o.begin() + long(from), o.begin() + long(from + len));
        break;
      }
      case 8:  // truncate
        if (!in.empty()) in.resize(r.below(in.size()));
        break;
    }
  }
  if (in.size() > max_len) in.resize(max_len);
}

// Runs one input; false (after reporting) when an exception escaped the target.
bool run_one(const Input& in) {
  g_current = &in;
  try {
    LLVMFuzzerTestOneInput(in.data(), in.size());
  } catch (const std::exception& e) {
    const std::string p = save_current("exception");
    std::fprintf(stderr, "fuzz: FINDING: uncaught %s: %s\n  input saved to %s\n", typeid(e).name(), e.what(),
                 p.c_str());
    return false;
  } catch (...) {
    const std::string p = save_current("exception");
    std::fprintf(stderr, "fuzz: FINDING: uncaught non-std exception; input saved to %s\n", p.c_str());
    return false;
  }
  g_current = nullptr;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 10000;
  double seconds = 0;
  uint64_t seed = 1;
  size_t max_len = 1 << 20;
  std::vector<std::string> paths;
  g_name = fs::path(argv[0]).filename().string();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "fuzz: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--iterations") iterations = std::atol(value().c_str());
    else if (a == "--seconds") seconds = std::atof(value().c_str());
    else if (a == "--seed") seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--max-len") max_len = size_t(std::atol(value().c_str()));
    else if (a == "--findings") g_findings = value();
    else if (a == "--help" || a == "-h") {
      std::printf("usage: %s [--iterations N] [--seconds S] [--seed K] [--max-len B] [--findings DIR] CORPUS...\n",
                  argv[0]);
      return 0;
    } else paths.push_back(a);
  }
#ifdef OSP_HAVE_SANITIZER_API
  __sanitizer_set_death_callback(on_death);
#endif
  for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(s, on_signal);

  std::vector<Input> corpus;
  for (const auto& p : paths) {
    std::vector<fs::path> files;
    if (fs::is_directory(p)) {
      for (const auto& e : fs::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.push_back(p);
    }
    std::sort(files.begin(), files.end());  // deterministic order
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  if (corpus.empty()) corpus.emplace_back();
  for (const auto& in : corpus)
    if (!run_one(in)) return 1;

  Rng r{seed * 0x9E3779B97F4A7C15ULL + 0x1234567ULL};
  const auto t0 = std::chrono::steady_clock::now();
  long done = 0;
  for (; done < iterations; ++done) {
    if (seconds > 0 &&
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds)
      break;
    Input in = corpus[r.below(corpus.size())];
    mutate(in, corpus, r, max_len);
    if (!run_one(in)) return 1;
  }
  std::printf("%s: %zu corpus inputs + %ld mutated inputs, no finding (seed %llu)\n", g_name.c_str(),
              corpus.size(), done, (unsigned long long)seed);
  return 0;
}

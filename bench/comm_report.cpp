// Communication report (osp-next-spec §4.8): bytes each rank sends per DiT forward under SSP
// (hybrid, dual-end) and under all-Ulysses (Wan2.1 baseline), from parallel::comm_volume — the same
// exchange tables the real run uses (tests/parallel check them against counted bytes). No data moves,
// so the 14B 720P plan runs in a second on a laptop.
//
// Prints one JSON line per (model, resolution, S, mode) and a table last.
// Usage: bench_comm_report [--elem-bytes 2] [--out-channels 5120|64|0]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "osp/parallel/comm_volume.h"
#include "osp/sparse/skiparse.h"

using namespace osp;

namespace {

struct Model {
  const char* name;
  int layers, heads, head_dim, full_blocks;
};
struct Res {
  const char* name;
  sparse::Grid grid;
};

double mib(uint64_t b) { return double(b) / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
  size_t eb = 2;           // bf16 activations on the GPU
  int64_t out_ch = -1;     // -1: the hidden size C (what model/dit.cpp gathers today)
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--elem-bytes") && i + 1 < argc) eb = size_t(std::atoi(argv[++i]));
    else if (!std::strcmp(argv[i], "--out-channels") && i + 1 < argc) out_ch = std::atoll(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--elem-bytes N] [--out-channels C]\n", argv[0]);
      return 2;
    }
  }
  const std::vector<Model> models = {{"14B", 40, 40, 128, 8}, {"1.3B", 30, 12, 128, 8}};
  const std::vector<Res> res = {{"720p", {21, 45, 80}}, {"768p", {21, 48, 80}},
                                {"480p", {21, 30, 52}}};
  struct Row {
    std::string model, res;
    int S, U;
    uint64_t ssp, ssp_switch, ssp_full, ssp_trans, ssp_out, uly, uly_block, switch_one;
    double ratio_block, ratio_expected, ratio_total;
  };
  std::vector<Row> rows;
  for (const auto& m : models)
    for (const auto& r : res)
      for (int S : {2, 4, 8}) {
        const int64_t C = int64_t(m.heads) * m.head_dim;
        const int64_t oc = out_ch < 0 ? C : out_ch;
        parallel::ForwardPlan hybrid;
        hybrid.grid = r.grid;
        hybrid.kinds = sparse::plan_blocks(m.layers, "dual_end", m.full_blocks);
        hybrid.P = 2;
        hybrid.heads = m.heads;
        hybrid.head_dim = m.head_dim;
        parallel::ForwardPlan full = hybrid;
        full.kinds = sparse::plan_blocks(m.layers, "full", 0);
        parallel::CommVolume a, b;
        try {
          // The busiest rank (uneven chunks / padded groups differ slightly between ranks).
          for (int rank = 0; rank < S; ++rank) {
            auto va = parallel::comm_volume(hybrid, "ssp", S, rank, 1, eb, oc);
            auto vb = parallel::comm_volume(full, "ulysses", S, rank, 1, eb, oc);
            if (va.total() > a.total()) a = va;
            if (vb.total() > b.total()) b = vb;
          }
        } catch (const std::exception& e) {
          std::printf("{\"bench\":\"comm_report\",\"model\":\"%s\",\"res\":\"%s\",\"S\":%d,"
                      "\"skipped\":\"%s\"}\n", m.name, r.name, S, e.what());
          continue;
        }
        const auto geo = sparse::skiparse_geometry(r.grid, 2);
        const double N = double(r.grid.numel()), Np = double(r.grid.T * geo.Hp * geo.Wp);
        Row row;
        row.model = m.name;
        row.res = r.name;
        row.S = S;
        row.U = a.U;
        row.ssp = a.total();
        row.ssp_switch = a.switch_bytes;
        row.ssp_full = a.full_bytes;
        row.ssp_trans = a.transition_bytes;
        row.ssp_out = a.output_bytes;
        row.uly = b.total();
        row.uly_block = b.full_bytes / uint64_t(b.full_blocks);
        row.switch_one = a.switches ? a.switch_bytes / uint64_t(a.switches) : 0;
        row.ratio_block = double(row.switch_one) / double(row.uly_block);
        row.ratio_expected = Np / (4 * N);
        row.ratio_total = double(row.ssp) / double(row.uly);
        rows.push_back(row);
        std::printf(
            "{\"bench\":\"comm_report\",\"model\":\"%s\",\"res\":\"%s\",\"grid\":[%lld,%lld,%lld],"
            "\"S\":%d,\"U\":%d,\"elem_bytes\":%zu,\"out_channels\":%lld,"
            "\"ssp\":{\"total\":%llu,\"full_blocks\":%llu,\"switches\":%llu,\"n_switches\":%d,"
            "\"transitions\":%llu,\"sparse_inner_ulysses\":%llu,\"output_gather\":%llu},"
            "\"ulysses\":{\"total\":%llu,\"per_block\":%llu,\"output_gather\":%llu},"
            "\"switch_over_ulysses_block\":%.6f,\"Np_over_4N\":%.6f,\"ssp_over_ulysses_total\":%.4f}\n",
            m.name, r.name, (long long)r.grid.T, (long long)r.grid.H, (long long)r.grid.W, S, a.U,
            eb, (long long)oc, (unsigned long long)a.total(), (unsigned long long)a.full_bytes,
            (unsigned long long)a.switch_bytes, a.switches, (unsigned long long)a.transition_bytes,
            (unsigned long long)a.sparse_ulysses_bytes, (unsigned long long)a.output_bytes,
            (unsigned long long)b.total(), (unsigned long long)row.uly_block,
            (unsigned long long)b.output_bytes, row.ratio_block, row.ratio_expected,
            row.ratio_total);
      }
  std::printf("\n| model | res | S (U) | SSP total MiB | full blk | switches | transitions | out gather "
              "| Ulysses total MiB | switch / Ulysses block | Np/(4N) | SSP / Ulysses |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows)
    std::printf("| %s | %s | %d (%d) | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.4f | %.4f | %.3f |\n",
                r.model.c_str(), r.res.c_str(), r.S, r.U, mib(r.ssp), mib(r.ssp_full),
                mib(r.ssp_switch), mib(r.ssp_trans), mib(r.ssp_out), mib(r.uly), r.ratio_block,
                r.ratio_expected, r.ratio_total);
  return 0;
}

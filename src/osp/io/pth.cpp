#include "osp/io/pth.h"

#include <set>

#include "osp/io/close_names.h"

namespace osp::io {

namespace {

using pickle::Kind;
using pickle::Object;

struct Builder {
  const ZipReader& zip;
  const pickle::Result& r;
  const std::string prefix;  // "<archive name>/"
  std::map<std::string, Tensor>& out;
  std::map<std::string, std::string>& meta;
  std::map<std::string, Tensor> storages;  // key -> 1-D base tensor over the record
  std::set<int> visited;                   // dicts already flattened

  const std::string& W() const { return zip.path(); }

  Tensor storage(const Object& s) {
    auto it = storages.find(s.s);
    if (it != storages.end()) {
      OSP_CHECK(it->second.dtype() == s.dtype, W(), ": storage '", s.s, "' is used as ",
                dtype_name(it->second.dtype()), " and as ", dtype_name(s.dtype));
      OSP_CHECK(it->second.numel() == s.i, W(), ": storage '", s.s, "' is declared with ",
                it->second.numel(), " and ", s.i, " elements");
      return it->second;
    }
    const std::string rec = prefix + "data/" + s.s;
    const ZipEntry* e = zip.find(rec);
    OSP_CHECK(e, W(), ": storage record '", rec, "' is missing from the archive");
    const uint64_t es = dtype_size(s.dtype);
    uint64_t need;
    OSP_CHECK(!__builtin_mul_overflow(uint64_t(s.i), es, &need), W(), ": storage '", s.s,
              "' size ", s.i, " x ", es, " bytes overflows");
    OSP_CHECK(e->size == need, W(), ": storage record '", rec, "' holds ", e->size,
              " bytes but the pickle declares ", s.i, " ", dtype_name(s.dtype), " elements (",
              need, " bytes)");
    const uint8_t* p = zip.data(*e);
    Tensor t;
    if (reinterpret_cast<uintptr_t>(p) % es != 0) {  // unaligned record: copy once
      t = Tensor::empty({s.i}, s.dtype);
      if (need) std::memcpy(t.raw(), p, size_t(need));
    } else {
      t = Tensor::from_blob(const_cast<uint8_t*>(p), {s.i}, s.dtype, Device::cpu(),
                            zip.bytes().owner);
    }
    storages.emplace(s.s, t);
    return t;
  }

  Tensor tensor(const Object& t, const std::string& name) {
    Tensor base = storage(r.objects[t.storage]);
    try {
      return base.as_strided(t.shape, t.strides, t.offset);
    } catch (const Error& e) {
      fail(str(W(), ": tensor '", name, "' does not fit its storage: ", e.what()));
    }
  }

  void flatten(int dict, const std::string& pre, int depth) {
    OSP_CHECK(depth <= PthFile::kMaxDictDepth, W(), ": dicts nested deeper than ",
              PthFile::kMaxDictDepth, " levels");
    OSP_CHECK(visited.insert(dict).second, W(), ": the same dict appears twice in the pickle");
    const Object& d = r.objects[dict];
    for (size_t i = 0; i + 1 < d.items.size(); i += 2) {
      const Object& k = r.objects[d.items[i]];
      std::string key;
      if (k.kind == Kind::Str) key = k.s;
      else if (k.kind == Kind::Int) key = std::to_string(k.i);
      else fail(str(W(), ": state dict key must be a string, got ", pickle::describe(r, d.items[i])));
      const std::string name = pre + key;
      const int vi = d.items[i + 1];
      const Object& v = r.objects[vi];
      if (v.kind == Kind::Tensor) {
        OSP_CHECK(!out.count(name), W(), ": tensor name '", name, "' appears twice");
        out.emplace(name, tensor(v, name));
      } else if (v.kind == Kind::Dict) {
        flatten(vi, name + ".", depth + 1);
      } else {
        meta[name] = pickle::describe(r, vi);
      }
    }
  }
};

}  // namespace

PthFile PthFile::open(const std::string& path) { return parse(map_file(path)); }

PthFile PthFile::parse(Bytes bytes, const pickle::Limits& lim) {
  PthFile f;
  f.zip_ = ZipReader::parse(std::move(bytes));
  const std::string& W = f.zip_.path();
  // The pickle is "<prefix>/data.pkl" with a one-level prefix (the archive name).
  const ZipEntry* pkl = nullptr;
  std::string prefix;
  for (const auto& e : f.zip_.entries()) {
    const std::string suffix = "/data.pkl";
    if (e.name.size() > suffix.size() &&
        e.name.compare(e.name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
        e.name.find('/') == e.name.size() - suffix.size()) {
      OSP_CHECK(!pkl, W, ": archive holds two pickles ('", pkl ? pkl->name : "", "' and '", e.name,
                "')");
      pkl = &e;
      prefix = e.name.substr(0, e.name.size() - suffix.size() + 1);
    }
  }
  if (!pkl) {
    for (const auto& e : f.zip_.entries())
      OSP_CHECK(e.name.find("constants.pkl") == std::string::npos, W,
                ": this is a TorchScript archive (torch.jit.save), not a torch.save state dict");
    fail(str(W, ": no '<name>/data.pkl' in the zip archive; not a torch.save checkpoint"));
  }
  if (const ZipEntry* bo = f.zip_.find(prefix + "byteorder")) {
    OSP_CHECK(bo->size <= 16, W, ": byteorder record too large");
    std::string order(reinterpret_cast<const char*>(f.zip_.data(*bo)), size_t(bo->size));
    OSP_CHECK(order == "little", W, ": byte order '", order,
              "' is not supported (only little-endian checkpoints)");
  }
  OSP_CHECK(pkl->size <= kMaxPickleBytes, W, ": data.pkl is ", pkl->size,
            " bytes, over the limit ", kMaxPickleBytes);
  const uint8_t* pdata = f.zip_.data(*pkl);
  f.zip_.verify_crc(*pkl);
  pickle::Result r = pickle::unpickle(pdata, size_t(pkl->size), W + " (data.pkl)", lim);
  OSP_CHECK(r.objects[r.root].kind == Kind::Dict, W, ": the pickle holds a ",
            pickle::kind_name(r.objects[r.root].kind),
            ", not a state dict; save model.state_dict() instead of the model");
  Builder b{f.zip_, r, prefix, f.tensors_, f.metadata_, {}, {}};
  b.flatten(r.root, "", 0);
  return f;
}

std::vector<std::string> PthFile::names() const {
  std::vector<std::string> v;
  for (auto& [k, t] : tensors_) v.push_back(k);
  return v;
}

Tensor PthFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(missing_tensor_message(name, "'" + path() + "'", names()));
  return it->second;
}

}  // namespace osp::io

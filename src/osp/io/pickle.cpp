#include "osp/io/pickle.h"

#include <cstring>
#include <unordered_map>

#include "osp/io/bytes.h"

namespace osp::io::pickle {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::Str: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Storage: return "storage";
    case Kind::Tensor: return "tensor";
  }
  return "?";
}

namespace {

// torch.<Name>Storage classes osp can map to a DType.
bool storage_dtype(const std::string& cls, DType* dt) {
  static const std::pair<const char*, DType> table[] = {
      {"FloatStorage", DType::F32},        {"DoubleStorage", DType::F64},
      {"HalfStorage", DType::F16},         {"BFloat16Storage", DType::BF16},
      {"LongStorage", DType::I64},         {"IntStorage", DType::I32},
      {"ByteStorage", DType::U8},          {"BoolStorage", DType::U8},
      {"Float8_e4m3fnStorage", DType::F8E4M3}};
  for (auto& [n, d] : table)
    if (cls == n) {
      *dt = d;
      return true;
    }
  return false;
}

const char* opcode_name(uint8_t op) {
  switch (op) {
    case 'I': return "INT";
    case 'L': return "LONG";
    case 'F': return "FLOAT";
    case 'S': return "STRING";
    case 'V': return "UNICODE";
    case 'P': return "PERSID";
    case 'g': return "GET";
    case 'p': return "PUT";
    case 'i': return "INST";
    case 'o': return "OBJ";
    case 0x81: return "NEWOBJ";
    case 0x92: return "NEWOBJ_EX";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

class Unpickler {
 public:
  Unpickler(const uint8_t* d, size_t n, const std::string& w, const Limits& l)
      : p_(d), n_(n), W_(w), lim_(l) {}

  Result run() {
    while (true) {
      OSP_CHECK(pos_ < n_, W_, ": pickle ends without STOP (truncated data.pkl)");
      const size_t at = pos_;
      const uint8_t op = p_[pos_++];
      switch (op) {
        case 0x80: {  // PROTO
          uint8_t v = u8();
          OSP_CHECK(v <= 5, W_, ": pickle protocol ", int(v), " is not supported");
          break;
        }
        case 0x95: take(8); break;  // FRAME: a length hint only
        case '.': {                 // STOP
          OSP_CHECK(!stack_.empty(), W_, ": pickle STOP with an empty stack");
          r_.root = stack_.back();
          return std::move(r_);
        }
        case '(': marks_.push_back(stack_.size()); check_stack(); break;
        case '1': stack_.resize(pop_mark()); break;  // POP_MARK
        case '0': pop(); break;                     // POP
        case '2': push(top()); break;               // DUP
        case 'N': push(make(Kind::None)); break;
        case 0x88: push(make_int(Kind::Bool, 1)); break;  // NEWTRUE
        case 0x89: push(make_int(Kind::Bool, 0)); break;  // NEWFALSE
        case 'K': push(make_int(Kind::Int, u8())); break;  // BININT1
        case 'M': push(make_int(Kind::Int, le16(take(2)))); break;  // BININT2
        case 'J': push(make_int(Kind::Int, int32_t(le32(take(4))))); break;  // BININT
        case 0x8a: push(make_long(u8())); break;                          // LONG1
        case 0x8b: push(make_long(le32(take(4)))); break;                 // LONG4
        case 'G': {  // BINFLOAT (big-endian double)
          const uint8_t* q = take(8);
          uint64_t u = 0;
          for (int k = 0; k < 8; ++k) u = (u << 8) | q[k];
          int o = make(Kind::Float);
          std::memcpy(&r_.objects[o].f, &u, 8);
          push(o);
          break;
        }
        case 'X': push(make_str(Kind::Str, le32(take(4)))); break;  // BINUNICODE
        case 0x8c: push(make_str(Kind::Str, u8())); break;          // SHORT_BINUNICODE
        case 0x8d: push(make_str(Kind::Str, le64(take(8)))); break; // BINUNICODE8
        case 'T': push(make_str(Kind::Str, le32(take(4)))); break;  // BINSTRING (py2)
        case 'U': push(make_str(Kind::Str, u8())); break;           // SHORT_BINSTRING
        case 'B': push(make_str(Kind::Bytes, le32(take(4)))); break;  // BINBYTES
        case 'C': push(make_str(Kind::Bytes, u8())); break;           // SHORT_BINBYTES
        case 0x8e: push(make_str(Kind::Bytes, le64(take(8)))); break; // BINBYTES8
        case ')': push(make(Kind::Tuple)); break;  // EMPTY_TUPLE
        case 0x85: push(make_tuple(1)); break;
        case 0x86: push(make_tuple(2)); break;
        case 0x87: push(make_tuple(3)); break;
        case 't': {  // TUPLE (from mark)
          size_t m = pop_mark();
          push(make_tuple(stack_.size() - m));
          break;
        }
        case '}': push(make(Kind::Dict)); break;  // EMPTY_DICT
        case ']': push(make(Kind::List)); break;  // EMPTY_LIST
        case 'd': {                                // DICT (from mark)
          size_t m = pop_mark();
          OSP_CHECK((stack_.size() - m) % 2 == 0, W_, ": DICT with an odd number of items");
          int o = make(Kind::Dict);
          r_.objects[o].items.assign(stack_.begin() + m, stack_.end());
          stack_.resize(m);
          push(o);
          break;
        }
        case 'l': {  // LIST (from mark)
          size_t m = pop_mark();
          int o = make(Kind::List);
          r_.objects[o].items.assign(stack_.begin() + m, stack_.end());
          stack_.resize(m);
          push(o);
          break;
        }
        case 's': {  // SETITEM
          int v = pop(), k = pop();
          Object& d = expect(top(), Kind::Dict, "SETITEM target");
          d.items.push_back(k);
          d.items.push_back(v);
          break;
        }
        case 'u': {  // SETITEMS
          size_t m = pop_mark();
          OSP_CHECK(m >= 1, W_, ": SETITEMS without a dict below its mark");
          OSP_CHECK((stack_.size() - m) % 2 == 0, W_, ": SETITEMS with an odd number of items");
          Object& d = expect(stack_[m - 1], Kind::Dict, "SETITEMS target");
          d.items.insert(d.items.end(), stack_.begin() + m, stack_.end());
          stack_.resize(m);
          break;
        }
        case 'a': {  // APPEND
          int v = pop();
          expect(top(), Kind::List, "APPEND target").items.push_back(v);
          break;
        }
        case 'e': {  // APPENDS
          size_t m = pop_mark();
          OSP_CHECK(m >= 1, W_, ": APPENDS without a list below its mark");
          Object& l = expect(stack_[m - 1], Kind::List, "APPENDS target");
          l.items.insert(l.items.end(), stack_.begin() + m, stack_.end());
          stack_.resize(m);
          break;
        }
        case 'q': memo_put(u8()); break;                 // BINPUT
        case 'r': memo_put(le32(take(4))); break;        // LONG_BINPUT
        case 0x94: memo_put(uint32_t(memo_.size())); break;  // MEMOIZE
        case 'h': push(memo_get(u8())); break;           // BINGET
        case 'j': push(memo_get(le32(take(4)))); break;  // LONG_BINGET
        case 'c': {                                      // GLOBAL "module\nname\n"
          std::string mod = line(), name = line();
          push(make_global(mod, name));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          int name = pop(), mod = pop();
          push(make_global(expect(mod, Kind::Str, "STACK_GLOBAL module").s,
                           expect(name, Kind::Str, "STACK_GLOBAL name").s));
          break;
        }
        case 'Q': {  // BINPERSID
          push(persistent_storage(pop()));
          break;
        }
        case 'R': {  // REDUCE
          int args = pop(), fn = pop();
          push(reduce(fn, args));
          break;
        }
        case 'b': {  // BUILD: only the state of an OrderedDict (its _metadata) is accepted
          int state = pop();
          const Object& o = r_.objects[top()];
          OSP_CHECK(o.kind == Kind::Dict, W_, ": BUILD on a ", kind_name(o.kind),
                    " is not supported (only state dicts of tensors are read)");
          (void)state;  // e.g. {'_metadata': {...}}: module versions, not needed
          break;
        }
        default:
          fail(str(W_, ": pickle opcode 0x", hex(op), " (", opcode_name(op), ") at offset ", at,
                   " is not supported; osp reads only plain state dicts written by torch.save"));
      }
    }
  }

 private:
  const uint8_t* p_;
  size_t n_, pos_ = 0;
  const std::string& W_;
  Limits lim_;
  Result r_;
  std::vector<int> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint32_t, int> memo_;

  static std::string hex(uint8_t v) {
    const char* d = "0123456789abcdef";
    return std::string{d[v >> 4], d[v & 15]};
  }
  const uint8_t* take(size_t k) {
    OSP_CHECK(k <= n_ - pos_, W_, ": pickle truncated at offset ", pos_, " (needs ", k,
              " more bytes)");
    const uint8_t* q = p_ + pos_;
    pos_ += k;
    return q;
  }
  uint8_t u8() { return *take(1); }
  std::string line() {
    size_t start = pos_;
    while (pos_ < n_ && p_[pos_] != '\n') {
      OSP_CHECK(pos_ - start < 256, W_, ": GLOBAL name longer than 256 bytes");
      ++pos_;
    }
    OSP_CHECK(pos_ < n_, W_, ": pickle truncated inside a GLOBAL");
    std::string s(reinterpret_cast<const char*>(p_ + start), pos_ - start);
    ++pos_;
    return s;
  }
  void check_stack() {
    OSP_CHECK(stack_.size() + marks_.size() <= lim_.max_stack, W_, ": pickle stack deeper than ",
              lim_.max_stack);
  }
  void push(int o) {
    stack_.push_back(o);
    check_stack();
  }
  int pop() {
    OSP_CHECK(!stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()), W_,
              ": pickle stack underflow at offset ", pos_ - 1);
    int o = stack_.back();
    stack_.pop_back();
    return o;
  }
  int top() {
    OSP_CHECK(!stack_.empty() && (marks_.empty() || stack_.size() > marks_.back()), W_,
              ": pickle stack underflow at offset ", pos_ - 1);
    return stack_.back();
  }
  size_t pop_mark() {
    OSP_CHECK(!marks_.empty(), W_, ": pickle uses a MARK that was never set (offset ", pos_ - 1,
              ")");
    size_t m = marks_.back();
    marks_.pop_back();
    return m;
  }
  int make(Kind k) {
    OSP_CHECK(r_.objects.size() < lim_.max_objects, W_, ": pickle creates more than ",
              lim_.max_objects, " objects");
    r_.objects.emplace_back();
    r_.objects.back().kind = k;
    return int(r_.objects.size() - 1);
  }
  int make_int(Kind k, int64_t v) {
    int o = make(k);
    r_.objects[o].i = v;
    return o;
  }
  int make_long(uint64_t nbytes) {
    OSP_CHECK(nbytes <= 8, W_, ": pickle integer of ", nbytes, " bytes is too large");
    const uint8_t* q = take(size_t(nbytes));
    uint64_t u = 0;
    for (uint64_t k = 0; k < nbytes; ++k) u |= uint64_t(q[k]) << (8 * k);
    if (nbytes > 0 && nbytes < 8 && (q[nbytes - 1] & 0x80)) u |= ~uint64_t(0) << (8 * nbytes);
    return make_int(Kind::Int, int64_t(u));
  }
  int make_str(Kind k, uint64_t len) {
    OSP_CHECK(len <= lim_.max_string, W_, ": pickle string of ", len, " bytes exceeds the limit ",
              lim_.max_string);
    const uint8_t* q = take(size_t(len));
    int o = make(k);
    r_.objects[o].s.assign(reinterpret_cast<const char*>(q), size_t(len));
    return o;
  }
  int make_tuple(size_t k) {
    OSP_CHECK(stack_.size() >= k && (marks_.empty() || stack_.size() - k >= marks_.back()), W_,
              ": pickle stack underflow building a tuple at offset ", pos_ - 1);
    int o = make(Kind::Tuple);
    r_.objects[o].items.assign(stack_.end() - k, stack_.end());
    stack_.resize(stack_.size() - k);
    return o;
  }
  Object& expect(int o, Kind k, const char* what) {
    Object& x = r_.objects[o];
    OSP_CHECK(x.kind == k, W_, ": ", what, " must be a ", kind_name(k), ", got a ",
              kind_name(x.kind));
    return x;
  }
  void memo_put(uint32_t idx) {
    int t = top();
    auto it = memo_.find(idx);
    if (it == memo_.end())
      OSP_CHECK(memo_.size() < lim_.max_memo, W_, ": pickle memo exceeds ", lim_.max_memo,
                " entries");
    memo_[idx] = t;
  }
  int memo_get(uint32_t idx) {
    auto it = memo_.find(idx);
    OSP_CHECK(it != memo_.end(), W_, ": pickle reads memo entry ", idx, " that was never stored");
    return it->second;
  }
  int make_global(std::string mod, std::string name) {  // by value: make() moves the table
    const std::string full = mod + "." + name;
    DType dt = DType::F32;
    bool ok = (mod == "collections" && name == "OrderedDict") ||
              (mod == "torch._utils" &&
               (name == "_rebuild_tensor_v2" || name == "_rebuild_tensor" ||
                name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state")) ||
              (mod == "torch" && storage_dtype(name, &dt));
    if (!ok) {
      if (mod == "torch" && name.size() > 7 && name.compare(name.size() - 7, 7, "Storage") == 0)
        fail(str(W_, ": tensors with storage type '", full,
                 "' are not supported (osp dtypes: f32 f64 f16 bf16 i64 i32 u8 bool fp8e4m3)"));
      fail(str(W_, ": pickle references the global '", full,
               "', which is not allowed: osp reads only plain state dicts (tensors in dicts) and "
               "never executes code from a checkpoint"));
    }
    int o = make(Kind::Global);
    r_.objects[o].s = full;
    if (mod == "torch") r_.objects[o].dtype = dt;
    return o;
  }
  // ('storage', torch.XStorage, key, location, numel) -> Storage
  int persistent_storage(int pid) {
    const Object& t = r_.objects[pid];
    OSP_CHECK(t.kind == Kind::Tuple && t.items.size() == 5, W_,
              ": persistent id must be a 5-tuple ('storage', type, key, location, numel), got ",
              describe(r_, pid));
    OSP_CHECK(r_.objects[t.items[0]].kind == Kind::Str && r_.objects[t.items[0]].s == "storage",
              W_, ": persistent id of kind ", describe(r_, t.items[0]), " is not supported");
    const Object& ty = r_.objects[t.items[1]];
    OSP_CHECK(ty.kind == Kind::Global && ty.s.rfind("torch.", 0) == 0 &&
                  ty.s.find("Storage") != std::string::npos,
              W_, ": persistent id storage type must be a torch storage class, got ",
              describe(r_, t.items[1]));
    const Object& key = r_.objects[t.items[2]];
    const Object& loc = r_.objects[t.items[3]];
    const Object& num = r_.objects[t.items[4]];
    OSP_CHECK(key.kind == Kind::Str && loc.kind == Kind::Str && num.kind == Kind::Int, W_,
              ": malformed storage persistent id ", describe(r_, pid));
    OSP_CHECK(num.i >= 0, W_, ": storage '", key.s, "' has a negative size ", num.i);
    Object s;  // built aside: make() may move the object table
    s.kind = Kind::Storage;
    s.dtype = ty.dtype;
    s.s = key.s;
    s.location = loc.s;
    s.i = num.i;
    int o = make(Kind::Storage);
    r_.objects[o] = std::move(s);
    return o;
  }
  Shape int_tuple(int o, const char* what) {
    const Object& t = r_.objects[o];
    OSP_CHECK(t.kind == Kind::Tuple, W_, ": tensor ", what, " must be a tuple, got ",
              describe(r_, o));
    OSP_CHECK(int(t.items.size()) <= lim_.max_rank, W_, ": tensor rank ", t.items.size(),
              " exceeds the limit ", lim_.max_rank);
    Shape s;
    for (int x : t.items) {
      const Object& v = r_.objects[x];
      OSP_CHECK(v.kind == Kind::Int && v.i >= 0, W_, ": tensor ", what,
                " entries must be non-negative integers, got ", describe(r_, o));
      s.push_back(v.i);
    }
    return s;
  }
  int reduce(int fn, int args) {
    const Object& f = r_.objects[fn];
    OSP_CHECK(f.kind == Kind::Global, W_, ": REDUCE needs a global callable, got a ",
              kind_name(f.kind));
    const Object& a = r_.objects[args];
    OSP_CHECK(a.kind == Kind::Tuple, W_, ": REDUCE arguments must be a tuple, got a ",
              kind_name(a.kind));
    const std::vector<int> av = a.items;
    const std::string name = f.s;
    if (name == "collections.OrderedDict") {
      OSP_CHECK(av.empty(), W_, ": OrderedDict(...) with arguments is not supported");
      return make(Kind::Dict);
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      const bool v2 = name == "torch._utils._rebuild_tensor_v2";
      OSP_CHECK(v2 ? (av.size() == 6 || av.size() == 7) : av.size() == 4, W_, ": ", name,
                " called with ", av.size(), " arguments");
      expect(av[0], Kind::Storage, "tensor storage");
      const Object& off = r_.objects[av[1]];
      OSP_CHECK(off.kind == Kind::Int && off.i >= 0, W_, ": tensor storage offset must be a "
                "non-negative integer, got ", describe(r_, av[1]));
      Shape shape = int_tuple(av[2], "size"), strides = int_tuple(av[3], "stride");
      OSP_CHECK(shape.size() == strides.size(), W_, ": tensor size ", shape_str(shape),
                " and stride ", shape_str(strides), " differ in rank");
      const int64_t offset = off.i;
      int o = make(Kind::Tensor);  // may move the object table: no references held past here
      Object& t = r_.objects[o];
      t.storage = av[0];
      t.dtype = r_.objects[av[0]].dtype;
      t.offset = offset;
      t.shape = std::move(shape);
      t.strides = std::move(strides);
      return o;
    }
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      OSP_CHECK(av.size() >= 1, W_, ": ", name, " without arguments");
      expect(av[0], Kind::Tensor, "parameter data");
      return av[0];
    }
    fail(str(W_, ": calling '", name, "' is not allowed"));
  }
};

}  // namespace

Result unpickle(const uint8_t* data, size_t size, const std::string& where, const Limits& lim) {
  return Unpickler(data, size, where, lim).run();
}

std::string describe(const Result& r, int o) {
  if (o < 0 || size_t(o) >= r.objects.size()) return "<invalid>";
  const Object& x = r.objects[o];
  switch (x.kind) {
    case Kind::None: return "None";
    case Kind::Bool: return x.i ? "True" : "False";
    case Kind::Int: return str(x.i);
    case Kind::Float: return str(x.f);
    case Kind::Str: return "'" + x.s.substr(0, 64) + (x.s.size() > 64 ? "...'" : "'");
    case Kind::Bytes: return str("bytes(", x.s.size(), ")");
    case Kind::Tuple: return str("tuple(", x.items.size(), ")");
    case Kind::List: return str("list(", x.items.size(), ")");
    case Kind::Dict: return str("dict(", x.items.size() / 2, ")");
    case Kind::Global: return x.s;
    case Kind::Storage: return str("storage '", x.s, "' ", dtype_name(x.dtype), "[", x.i, "]");
    case Kind::Tensor: return str("tensor ", dtype_name(x.dtype), shape_str(x.shape));
  }
  return "?";
}

}  // namespace osp::io::pickle


// A restricted unpickler for the pickles torch.save writes for a state dict (data.pkl).
//
// It never executes anything: GLOBAL/STACK_GLOBAL accept only collections.OrderedDict, the
// torch._utils tensor/parameter rebuild functions and the torch.*Storage classes, and REDUCE
// only applies those, symbolically. Any other global or opcode is an osp::Error naming it.
// The result is a flat object table (no ownership cycles, no recursion on destruction).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::io::pickle {

enum class Kind : uint8_t {
  None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict,
  Global,   // an allowed callable or class; `s` = "module.name"
  Storage,  // a persistent-id storage record
  Tensor,   // a rebuilt tensor (storage object + view)
};
const char* kind_name(Kind k);

struct Object {
  Kind kind = Kind::None;
  int64_t i = 0;     // Int, Bool; Storage: element count
  double f = 0;      // Float
  std::string s;     // Str, Bytes, Global name; Storage: key (zip record name)
  std::vector<int> items;  // Tuple/List elements; Dict: key0, value0, key1, value1, ...
  DType dtype = DType::F32;  // Storage (from its class) and Tensor
  std::string location;      // Storage: "cpu", "cuda:0", ...
  int storage = -1;          // Tensor: index of its Storage object
  int64_t offset = 0;        // Tensor: storage offset in elements
  Shape shape, strides;      // Tensor
};

struct Limits {
  size_t max_stack = 1u << 20;
  size_t max_memo = 1u << 20;
  size_t max_string = 1u << 20;  // bytes in one string
  size_t max_objects = 1u << 22;  // a real state dict needs ~12 per tensor
  int max_rank = 16;
};

struct Result {
  std::vector<Object> objects;
  int root = -1;
};

// Unpickles `data`; `where` names the source in error messages.
Result unpickle(const uint8_t* data, size_t size, const std::string& where, const Limits& lim = {});

// Short description of an object for metadata and errors ("int 3", "str 'x'", "tuple(2)").
std::string describe(const Result& r, int obj);

}  // namespace osp::io::pickle

// Tensor: a small value type over shared storage (dtype, shape, strides, offset, device).
// Copying a Tensor shares its storage; use clone() for a deep copy.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "osp/core/device.h"
#include "osp/core/dtype.h"
#include "osp/core/error.h"

namespace osp {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3, 4]"
int64_t shape_numel(const Shape& s);

// A block of memory on one device. `owner` keeps external memory (an mmap, a parent
// buffer) alive; when null, the storage frees `data` with the device allocator.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::shared_ptr<void> owner;
  bool owns = false;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

class Tensor {
 public:
  Tensor() = default;

  // ---- creation ----
  static Tensor empty(const Shape& shape, DType dtype, Device dev = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device dev = Device::cpu());
  // CPU f32 tensor from values (row-major).
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape);
  // A view over memory owned elsewhere; `owner` is kept alive as long as the view.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device dev,
                          std::shared_ptr<void> owner);

  // ---- properties ----
  bool defined() const { return static_cast<bool>(storage_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }  // in elements
  int64_t offset() const { return offset_; }           // in elements
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;  // negative d counts from the end
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  std::string desc() const;  // "bf16[2, 3] on cuda:0"

  // ---- raw access ----
  void* raw() const;  // pointer to element 0 (storage data + offset)
  template <typename T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // ---- views (share storage) ----
  Tensor view(const Shape& shape) const;     // needs contiguous; one dim may be -1
  Tensor reshape(const Shape& shape) const;  // view if contiguous, else copy
  Tensor slice(int d, int64_t start, int64_t end) const;  // [start, end) along d
  Tensor select(int d, int64_t i) const;                  // removes dim d
  Tensor transpose(int a, int b) const;
  Tensor permute(const std::vector<int>& order) const;
  Tensor unsqueeze(int d) const;
  // A view with explicit shape, strides (elements) and offset into this tensor's storage
  // (e.g. a PyTorch view rebuilt from a checkpoint). Throws if any element would fall
  // outside the storage or a stride/dimension is negative.
  Tensor as_strided(const Shape& shape, const Shape& strides, int64_t offset) const;

  // ---- copies ----
  Tensor contiguous() const;             // self if contiguous
  Tensor clone() const;                  // always a new contiguous tensor
  Tensor to(Device dev) const;           // self if already there
  Tensor to(DType dt) const;             // self if already that dtype (CPU or CUDA)
  void copy_from(const Tensor& src);     // same shape; converts dtype/device as needed
  void zero_();

  // CPU f32 copy of the values (any dtype/device) as a flat vector, row-major.
  std::vector<float> to_float_vector() const;
  // Element read for tests (CPU only, converts to double).
  double item(const std::vector<int64_t>& idx) const;

 private:
  std::shared_ptr<Storage> storage_;
  DType dtype_ = DType::F32;
  Device device_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
};

// Contiguous strides for a shape.
Shape contiguous_strides(const Shape& s);

// Shape/dtype/device checks with actionable messages (used by ops).
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_dtype(const Tensor& t, DType dt, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

// ‖a − b‖ / ‖b‖ over all elements (both converted to f32 on the CPU).
double relative_error(const Tensor& a, const Tensor& b);
double max_abs_diff(const Tensor& a, const Tensor& b);

}  // namespace osp

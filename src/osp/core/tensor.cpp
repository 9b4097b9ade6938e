#include "osp/core/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "osp/core/tensor_kernels.h"

namespace osp {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = int(s.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

Storage::~Storage() {
  if (!owns || !data) return;
  if (device.is_cpu()) cpu_free(data);
  else cuda_free(data, device.index);
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device dev) {
  for (auto d : shape) OSP_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  auto st = std::make_shared<Storage>();
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = dev;
  st->data = dev.is_cpu() ? cpu_alloc(st->bytes) : cuda_alloc(st->bytes, dev.index);
  st->owns = true;
  Tensor t;
  t.storage_ = std::move(st);
  t.dtype_ = dtype;
  t.device_ = dev;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  t.zero_();
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape) {
  OSP_CHECK(int64_t(v.size()) == shape_numel(shape), "from_vector: ", v.size(),
            " values do not fill shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!v.empty()) std::memcpy(t.raw(), v.data(), v.size() * 4);
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device dev,
                         std::shared_ptr<void> owner) {
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = dev;
  st->owner = std::move(owner);
  st->owns = false;
  Tensor t;
  t.storage_ = std::move(st);
  t.dtype_ = dtype;
  t.device_ = dev;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

int64_t Tensor::size(int d) const {
  int n = dim();
  if (d < 0) d += n;
  OSP_CHECK(d >= 0 && d < n, "dimension ", d, " out of range for ", desc());
  return shape_[d];
}

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

std::string Tensor::desc() const {
  if (!defined()) return "undefined tensor";
  return str(dtype_name(dtype_), shape_str(shape_), " on ", device_.name());
}

void* Tensor::raw() const {
  OSP_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::view(const Shape& shape_in) const {
  OSP_CHECK(is_contiguous(), "view() needs a contiguous tensor, got ", desc());
  Shape s = shape_in;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      OSP_CHECK(infer < 0, "view(): only one -1 allowed in ", shape_str(shape_in));
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) {
    OSP_CHECK(known > 0 && numel() % known == 0, "view(): cannot infer ", shape_str(shape_in),
              " from ", desc());
    s[infer] = numel() / known;
  }
  OSP_CHECK(shape_numel(s) == numel(), "view(): shape ", shape_str(s), " does not match ", desc());
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::reshape(const Shape& s) const {
  return is_contiguous() ? view(s) : contiguous().view(s);
}

Tensor Tensor::slice(int d, int64_t start, int64_t end) const {
  if (d < 0) d += dim();
  OSP_CHECK(d >= 0 && d < dim(), "slice(): bad dimension for ", desc());
  OSP_CHECK(0 <= start && start <= end && end <= shape_[d], "slice(): range [", start, ", ", end,
            ") out of bounds for dim ", d, " of ", desc());
  Tensor t = *this;
  t.offset_ += start * strides_[d];
  t.shape_[d] = end - start;
  return t;
}

Tensor Tensor::select(int d, int64_t i) const {
  if (d < 0) d += dim();
  Tensor t = slice(d, i, i + 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::transpose(int a, int b) const {
  if (a < 0) a += dim();
  if (b < 0) b += dim();
  OSP_CHECK(a >= 0 && a < dim() && b >= 0 && b < dim(), "transpose(): bad dims for ", desc());
  Tensor t = *this;
  std::swap(t.shape_[a], t.shape_[b]);
  std::swap(t.strides_[a], t.strides_[b]);
  return t;
}

Tensor Tensor::permute(const std::vector<int>& order) const {
  OSP_CHECK(int(order.size()) == dim(), "permute(): order has ", order.size(), " dims, tensor ",
            desc());
  Tensor t = *this;
  std::vector<bool> seen(dim(), false);
  for (int i = 0; i < dim(); ++i) {
    int o = order[i];
    OSP_CHECK(o >= 0 && o < dim() && !seen[o], "permute(): invalid order");
    seen[o] = true;
    t.shape_[i] = shape_[o];
    t.strides_[i] = strides_[o];
  }
  return t;
}

Tensor Tensor::unsqueeze(int d) const {
  if (d < 0) d += dim() + 1;
  OSP_CHECK(d >= 0 && d <= dim(), "unsqueeze(): bad dim for ", desc());
  Tensor t = *this;
  int64_t st = d < dim() ? shape_[d] * strides_[d] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, st);
  return t;
}

Tensor Tensor::as_strided(const Shape& shape, const Shape& strides, int64_t offset) const {
  OSP_CHECK(defined(), "as_strided() on an undefined tensor");
  OSP_CHECK(shape.size() == strides.size(), "as_strided(): shape ", shape_str(shape), " and strides ",
            shape_str(strides), " differ in rank");
  OSP_CHECK(offset >= 0, "as_strided(): negative offset ", offset);
  const int64_t es = int64_t(dtype_size(dtype_));
  const int64_t cap = int64_t(storage_->bytes) / es;  // elements in the storage
  int64_t last = offset, n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    OSP_CHECK(shape[i] >= 0 && strides[i] >= 0, "as_strided(): negative size or stride in shape ",
              shape_str(shape), " strides ", shape_str(strides));
    OSP_CHECK(!__builtin_mul_overflow(n, shape[i], &n), "as_strided(): element count overflows");
    if (shape[i] == 0) continue;
    int64_t span;
    OSP_CHECK(!__builtin_mul_overflow(shape[i] - 1, strides[i], &span) &&
                  !__builtin_add_overflow(last, span, &last),
              "as_strided(): extent overflows for shape ", shape_str(shape));
  }
  OSP_CHECK(n == 0 ? offset <= cap : last < cap, "as_strided(): shape ", shape_str(shape),
            " strides ", shape_str(strides), " offset ", offset, " reach past the storage of ",
            cap, " elements");
  Tensor t = *this;
  t.shape_ = shape;
  t.strides_ = strides;
  t.offset_ = offset;
  return t;
}

namespace {
// Generic CPU strided copy with dtype conversion.
double load_cpu(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::F64: return static_cast<const double*>(base)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::F8E4M3: return e4m3_to_f32(static_cast<const uint8_t*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return double(static_cast<const int64_t*>(base)[i]);
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
    case DType::HiF8: fail("HiF8 tensors are decoded with quant::hif8_decode, not converted directly");
  }
  return 0;
}
void store_cpu(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[i] = float(v); break;
    case DType::F64: static_cast<double*>(base)[i] = v; break;
    case DType::BF16: static_cast<uint16_t*>(base)[i] = f32_to_bf16(float(v)); break;
    case DType::F16: static_cast<uint16_t*>(base)[i] = f32_to_f16(float(v)); break;
    case DType::F8E4M3: static_cast<uint8_t*>(base)[i] = f32_to_e4m3(float(v)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = int32_t(v); break;
    case DType::I64: static_cast<int64_t*>(base)[i] = int64_t(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = uint8_t(v); break;
    case DType::HiF8: fail("HiF8 tensors are encoded with quant::hif8_encode, not converted directly");
  }
}

// Copies src (any strides, CPU) into contiguous dst (CPU), converting dtype.
void cpu_copy_convert(const Tensor& src, void* dst, DType dt) {
  const int64_t n = src.numel();
  const char* base = static_cast<const char*>(src.storage()->data);
  const size_t es = dtype_size(src.dtype());
  const bool contig = src.is_contiguous();
  if (contig && src.dtype() == dt) {
    std::memcpy(dst, src.raw(), size_t(n) * es);
    return;
  }
  const int r = src.dim();
  const auto& sh = src.shape();
  const auto& st = src.strides();
  if (contig) {
    const void* s = src.raw();
    if (src.dtype() == DType::BF16 && dt == DType::F32) {
      const uint16_t* a = static_cast<const uint16_t*>(s);
      float* b = static_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) b[i] = bf16_to_f32(a[i]);
      return;
    }
    if (src.dtype() == DType::F32 && dt == DType::BF16) {
      const float* a = static_cast<const float*>(s);
      uint16_t* b = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) b[i] = f32_to_bf16(a[i]);
      return;
    }
    for (int64_t i = 0; i < n; ++i) store_cpu(dst, dt, i, load_cpu(s, src.dtype(), i));
    return;
  }
  std::vector<int64_t> idx(r, 0);
  const void* b0 = base + src.offset() * int64_t(es);
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    for (int d = 0; d < r; ++d) off += idx[d] * st[d];
    if (src.dtype() == dt)
      std::memcpy(static_cast<char*>(dst) + i * es, static_cast<const char*>(b0) + off * es, es);
    else
      store_cpu(dst, dt, i, load_cpu(b0, src.dtype(), off));
    for (int d = r - 1; d >= 0; --d) {
      if (++idx[d] < sh[d]) break;
      idx[d] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor out = empty(shape_, dtype_, device_);
  out.copy_from(*this);
  return out;
}

Tensor Tensor::to(Device dev) const {
  if (dev == device_) return *this;
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype_, dev);
  memcpy_any(out.raw(), dev, src.raw(), device_, nbytes());
  return out;
}

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  Tensor out = empty(shape_, dt, device_);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  OSP_CHECK(src.shape() == shape_, "copy_from: shape ", shape_str(src.shape()), " into ",
            shape_str(shape_));
  OSP_CHECK(is_contiguous(), "copy_from: destination must be contiguous, got ", desc());
  if (numel() == 0) return;
  if (device_.is_cpu() && src.device().is_cpu()) {
    cpu_copy_convert(src, raw(), dtype_);
    return;
  }
  // Bring src to this device, contiguous, then convert there.
  Tensor s = src;
  if (s.device() != device_) {
    if (s.device().is_cuda() && !s.is_contiguous()) s = s.contiguous();
    if (device_.is_cpu()) {  // GPU -> CPU: copy raw, convert on the host
      Tensor tmp = s.to(Device::cpu());
      cpu_copy_convert(tmp, raw(), dtype_);
      return;
    }
    if (!s.is_contiguous()) s = s.contiguous();
    if (s.dtype() != dtype_ && (s.dtype() == DType::F64 || s.dtype() == DType::I32 ||
                                s.dtype() == DType::I64 || s.dtype() == DType::U8)) {
      Tensor h = Tensor::empty(shape_, dtype_);
      cpu_copy_convert(s, h.raw(), dtype_);
      s = h;
    }
    Tensor moved = Tensor::empty(s.shape(), s.dtype(), device_);
    memcpy_any(moved.raw(), device_, s.raw(), s.device(), s.nbytes());
    s = moved;
  }
  // Both on the same CUDA device now.
  if (!s.is_contiguous() && s.dtype() == dtype_) {  // one strided pass straight into place
    detail::cuda_strided_copy(s.raw(), raw(), dtype_size(s.dtype()), s.dim(), s.shape().data(),
                              s.strides().data(), s.numel());
    return;
  }
  if (!s.is_contiguous()) {
    Tensor c = Tensor::empty(s.shape(), s.dtype(), device_);
    detail::cuda_strided_copy(s.raw(), c.raw(), dtype_size(s.dtype()), s.dim(), s.shape().data(),
                              s.strides().data(), s.numel());
    s = c;
  }
  detail::cuda_cast(s.raw(), s.dtype(), raw(), dtype_, numel());
}

void Tensor::zero_() {
  if (!defined() || numel() == 0) return;
  OSP_CHECK(is_contiguous(), "zero_() needs a contiguous tensor, got ", desc());
  memset_any(raw(), device_, 0, nbytes());
}

std::vector<float> Tensor::to_float_vector() const {
  Tensor c = device_.is_cpu() ? *this : to(Device::cpu());
  std::vector<float> v(static_cast<size_t>(numel()));
  if (!v.empty()) cpu_copy_convert(c, v.data(), DType::F32);
  return v;
}

double Tensor::item(const std::vector<int64_t>& idx) const {
  OSP_CHECK(device_.is_cpu(), "item() needs a CPU tensor, got ", desc());
  OSP_CHECK(int(idx.size()) == dim(), "item(): index rank ", idx.size(), " for ", desc());
  int64_t off = 0;
  for (int d = 0; d < dim(); ++d) {
    OSP_CHECK(idx[d] >= 0 && idx[d] < shape_[d], "item(): index out of range for ", desc());
    off += idx[d] * strides_[d];
  }
  const char* b0 = static_cast<const char*>(storage_->data) + offset_ * int64_t(dtype_size(dtype_));
  return load_cpu(b0, dtype_, off);
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  OSP_CHECK(t.defined(), what, ": tensor is undefined, expected shape ", shape_str(expected));
  OSP_CHECK(t.shape() == expected, what, ": expected shape ", shape_str(expected), ", got ",
            shape_str(t.shape()));
}
void check_dtype(const Tensor& t, DType dt, const char* what) {
  OSP_CHECK(t.dtype() == dt, what, ": expected dtype ", dtype_name(dt), ", got ", t.desc());
}
void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  OSP_CHECK(a.device() == b.device(), what, ": tensors on different devices (", a.desc(), " vs ",
            b.desc(), ")");
}

double relative_error(const Tensor& a, const Tensor& b) {
  OSP_CHECK(a.numel() == b.numel(), "relative_error: sizes differ (", a.desc(), " vs ", b.desc(),
            ")");
  auto va = a.to_float_vector(), vb = b.to_float_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    double d = double(va[i]) - double(vb[i]);
    num += d * d;
    den += double(vb[i]) * double(vb[i]);
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  OSP_CHECK(a.numel() == b.numel(), "max_abs_diff: sizes differ");
  auto va = a.to_float_vector(), vb = b.to_float_vector();
  double m = 0;
  for (size_t i = 0; i < va.size(); ++i) m = std::max(m, std::fabs(double(va[i]) - double(vb[i])));
  return m;
}

}  // namespace osp

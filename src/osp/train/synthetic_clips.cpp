#include "osp/train/synthetic_clips.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "osp/core/error.h"
#include "osp/core/philox.h"

namespace osp::train {

namespace {

using json = nlohmann::json;

constexpr float kPi = 3.14159265358979f;

// Saturated object colours: pairwise RGB distance ≥ 140, and ≥ 120 to every background.
const NamedColor kObjectColors[kNumObjectColors] = {
    {"red", {230, 40, 40}},  {"yellow", {240, 220, 40}}, {"green", {40, 190, 60}},
    {"cyan", {40, 210, 220}}, {"blue", {40, 70, 230}},   {"magenta", {220, 50, 210}},
};
const NamedColor kBackgrounds[kNumBackgrounds] = {
    {"black", {15, 15, 15}},      {"white", {240, 240, 240}},    {"gray", {128, 128, 128}},
    {"dark blue", {20, 30, 80}}, {"dark green", {20, 70, 35}}, {"beige", {225, 210, 170}},
};
const char* const kShapeNames[kNumShapes] = {"circle", "square", "triangle", "cross", "ring"};
const char* const kMotionNames[kNumMotions] = {"left_to_right", "right_to_left", "up",     "down",
                                               "bounce",        "grow",          "shrink", "rotate"};
const char* const kMotionSingular[kNumMotions] = {
    "moves from left to right", "moves from right to left", "moves up", "moves down",
    "bounces up and down",      "grows",                    "shrinks",  "rotates"};
const char* const kMotionPlural[kNumMotions] = {
    "move from left to right", "move from right to left", "move up", "move down",
    "bounce up and down",      "grow",                    "shrink",  "rotate"};

// Draws from Philox4x32-10, counter (index lo, index hi, draw, 0xC11B0000 + split).
class ClipRng {
 public:
  ClipRng(uint64_t seed, ClipSplit split, int64_t index)
      : key_{uint32_t(seed & 0xffffffffu), uint32_t(seed >> 32)},
        lo_(uint32_t(uint64_t(index) & 0xffffffffu)),
        hi_(uint32_t(uint64_t(index) >> 32)),
        tag_(0xC11B0000u + uint32_t(split)) {}
  uint32_t next() {
    if (used_ == 4) {
      words_ = philox4x32_10({lo_, hi_, draw_++, tag_}, key_);
      used_ = 0;
    }
    return words_[used_++];
  }
  // Uniform in (0, 1).
  double uniform() { return (double(next()) + 0.5) * (1.0 / 4294967296.0); }
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  int pick(int n) { return int(next() % uint32_t(n)); }

 private:
  PhiloxKey key_;
  uint32_t lo_, hi_, tag_;
  uint32_t draw_ = 0;
  PhiloxCounter words_{};
  int used_ = 4;
};

int lookup(const std::string& name, const char* const* names, int n) {
  for (int i = 0; i < n; ++i)
    if (name == names[i]) return i;
  return -1;
}

float sd_box(float px, float py, float bx, float by) {
  const float dx = std::fabs(px) - bx, dy = std::fabs(py) - by;
  const float ox = std::max(dx, 0.f), oy = std::max(dy, 0.f);
  return std::sqrt(ox * ox + oy * oy) + std::min(std::max(dx, dy), 0.f);
}

// Equilateral triangle, y up, half side r, centroid at the origin (Inigo Quilez's formula).
float sd_triangle(float px, float py, float r) {
  const float k = std::sqrt(3.f);
  px = std::fabs(px) - r;
  py = py + r / k;
  if (px + k * py > 0.f) {
    const float nx = (px - k * py) / 2.f, ny = (-k * px - py) / 2.f;
    px = nx;
    py = ny;
  }
  px -= std::clamp(px, -2.f * r, 0.f);
  const float len = std::sqrt(px * px + py * py);
  return py > 0.f ? -len : (py < 0.f ? len : 0.f);
}

// Signed distance (pixels) from q (shape frame, screen axes: y down) to the outline.
float shape_sdf(ObjectShape s, float qx, float qy, float r) {
  switch (s) {
    case ObjectShape::Circle:
      return std::sqrt(qx * qx + qy * qy) - r;
    case ObjectShape::Square:
      return sd_box(qx, qy, 0.85f * r, 0.85f * r);
    case ObjectShape::Triangle:  // circumradius 1.1 r, pointing up on screen
      return sd_triangle(qx, -qy, 1.1f * r * std::sqrt(3.f) / 2.f);
    case ObjectShape::Cross:
      return std::min(sd_box(qx, qy, r, r / 3.f), sd_box(qx, qy, r / 3.f, r));
    case ObjectShape::Ring:
      return std::fabs(std::sqrt(qx * qx + qy * qy) - 0.775f * r) - 0.225f * r;
  }
  return 1e9f;
}

double round4(float v) { return std::round(double(v) * 1e4) / 1e4; }

}  // namespace

const NamedColor& object_color(int i) {
  OSP_CHECK(i >= 0 && i < kNumObjectColors, "object colour index ", i, " out of range");
  return kObjectColors[i];
}
const NamedColor& background_color(int i) {
  OSP_CHECK(i >= 0 && i < kNumBackgrounds, "background index ", i, " out of range");
  return kBackgrounds[i];
}
const char* shape_name(ObjectShape s) { return kShapeNames[int(s)]; }
const char* motion_name(Motion m) { return kMotionNames[int(m)]; }

int object_color_index(const std::string& name) {
  for (int i = 0; i < kNumObjectColors; ++i)
    if (name == kObjectColors[i].name) return i;
  return -1;
}
int background_index(const std::string& name) {
  for (int i = 0; i < kNumBackgrounds; ++i)
    if (name == kBackgrounds[i].name) return i;
  return -1;
}
int shape_index(const std::string& name) { return lookup(name, kShapeNames, kNumShapes); }
int motion_index(const std::string& name) { return lookup(name, kMotionNames, kNumMotions); }

bool is_valid_composition(ObjectShape s, Motion m) {
  return !(m == Motion::Rotate && (s == ObjectShape::Circle || s == ObjectShape::Ring));
}

bool is_heldout(int color, ObjectShape s, Motion m) { return (color + 2 * int(s) + 3 * int(m)) % 7 == 0; }

bool ClipSpec::heldout() const {
  for (const auto& o : objects)
    if (is_heldout(o.color, o.shape, o.motion)) return true;
  return false;
}

float shape_extent(ObjectShape s) {
  switch (s) {
    case ObjectShape::Circle:
    case ObjectShape::Ring:
      return 1.f;
    case ObjectShape::Square:
      return 0.85f * std::sqrt(2.f);
    case ObjectShape::Triangle:
      return 1.1f;
    case ObjectShape::Cross:
      return std::sqrt(1.f + 1.f / 9.f);
  }
  return 1.f;
}

ObjectPose object_pose(const ClipObject& o, int frame, int frames) {
  const float t = frames > 1 ? float(frame) / float(frames - 1) : 0.f;
  ObjectPose p;
  p.cx = o.x0 + (o.x1 - o.x0) * t;
  p.cy = o.y0 + (o.y1 - o.y0) * t;
  if (o.motion == Motion::Bounce) p.cy -= o.bounce_height * std::fabs(std::sin(2.f * kPi * t));
  p.radius = o.size * (o.scale0 + (o.scale1 - o.scale0) * t);
  p.angle = o.angle0 + o.angle_span * t;
  return p;
}

ClipSpec sample_clip(uint64_t seed, ClipSplit split, int64_t index, int width, int height, int frames) {
  OSP_CHECK(width >= 32 && height >= 32, "synthetic clips need at least 32x32 pixels, got ", width, "x", height);
  OSP_CHECK(frames >= 2, "synthetic clips need at least 2 frames, got ", frames);
  OSP_CHECK(index >= 0, "clip index must be >= 0, got ", index);
  ClipRng rng(seed, split, index);
  ClipSpec spec;
  spec.width = width;
  spec.height = height;
  spec.frames = frames;
  spec.split = split;
  spec.index = index;
  spec.seed = seed;

  const bool two = rng.uniform() < 0.35;
  const bool two_tone = rng.uniform() < 0.3;
  spec.background_top = rng.pick(kNumBackgrounds);
  spec.background_bottom =
      two_tone ? (spec.background_top + 1 + rng.pick(kNumBackgrounds - 1)) % kNumBackgrounds : spec.background_top;

  // First object: a composition of the split.
  struct Triple {
    int c, s, m;
  };
  std::vector<Triple> first;
  for (int c = 0; c < kNumObjectColors; ++c)
    for (int s = 0; s < kNumShapes; ++s)
      for (int m = 0; m < kNumMotions; ++m) {
        if (!is_valid_composition(ObjectShape(s), Motion(m))) continue;
        if (is_heldout(c, ObjectShape(s), Motion(m)) == (split == ClipSplit::Heldout)) first.push_back({c, s, m});
      }
  const Triple t0 = first[size_t(rng.pick(int(first.size())))];
  std::vector<Triple> chosen{t0};
  if (two) {
    std::vector<Triple> second;  // same motion, another colour; training compositions only in train
    for (int c = 0; c < kNumObjectColors; ++c)
      for (int s = 0; s < kNumShapes; ++s) {
        if (c == t0.c || !is_valid_composition(ObjectShape(s), Motion(t0.m))) continue;
        if (split == ClipSplit::Train && is_heldout(c, ObjectShape(s), Motion(t0.m))) continue;
        second.push_back({c, s, t0.m});
      }
    chosen.push_back(second[size_t(rng.pick(int(second.size())))]);
  }

  // Lanes: the whole frame for one object; two halves for two.
  const Motion motion = Motion(t0.m);
  const bool horizontal = motion == Motion::LeftToRight || motion == Motion::RightToLeft;
  const bool vertical = motion == Motion::Up || motion == Motion::Down || motion == Motion::Bounce;
  const bool stack = horizontal || (!vertical && width < height);  // lanes one above the other
  const float W = float(width), H = float(height), minwh = std::min(W, H);
  const float margin = 0.04f * minwh + 1.f;
  for (size_t k = 0; k < chosen.size(); ++k) {
    float lx0 = 0, ly0 = 0, lx1 = W, ly1 = H;
    if (chosen.size() == 2) {
      if (stack) {
        ly0 = k == 0 ? 0.f : H / 2;
        ly1 = k == 0 ? H / 2 : H;
      } else {
        lx0 = k == 0 ? 0.f : W / 2;
        lx1 = k == 0 ? W / 2 : W;
      }
    }
    ClipObject o;
    o.color = chosen[k].c;
    o.shape = ObjectShape(chosen[k].s);
    o.motion = motion;
    const float ext = shape_extent(o.shape);
    const bool sized = motion == Motion::Grow || motion == Motion::Shrink;
    const float grow_max = sized ? 1.4f : 1.f;
    const float lane_half = std::min(lx1 - lx0, ly1 - ly0) / 2.f - margin;
    o.size = std::min(float(rng.uniform(0.10, 0.15)) * minwh, lane_half / (ext * grow_max));
    const float e = o.size * ext * grow_max;
    const float xlo = lx0 + margin + e, xhi = lx1 - margin - e;
    const float ylo = ly0 + margin + e, yhi = ly1 - margin - e;
    const float xmid = (xlo + xhi) / 2, ymid = (ylo + yhi) / 2;
    const float xj = xmid + float(rng.uniform(-0.3, 0.3)) * (xhi - xlo) / 2;
    const float yj = ymid + float(rng.uniform(-0.3, 0.3)) * (yhi - ylo) / 2;
    const float a = float(rng.uniform(0.0, 0.2)), b = float(rng.uniform(0.0, 0.2));
    o.x0 = o.x1 = xj;
    o.y0 = o.y1 = yj;
    switch (motion) {
      case Motion::LeftToRight:
        o.x0 = xlo + a * (xhi - xlo);
        o.x1 = xhi - b * (xhi - xlo);
        break;
      case Motion::RightToLeft:
        o.x0 = xhi - a * (xhi - xlo);
        o.x1 = xlo + b * (xhi - xlo);
        break;
      case Motion::Up:
        o.y0 = yhi - a * (yhi - ylo);
        o.y1 = ylo + b * (yhi - ylo);
        break;
      case Motion::Down:
        o.y0 = ylo + a * (yhi - ylo);
        o.y1 = yhi - b * (yhi - ylo);
        break;
      case Motion::Bounce:
        o.y0 = o.y1 = yhi;
        o.bounce_height = float(rng.uniform(0.6, 0.9)) * (yhi - ylo);
        break;
      case Motion::Grow:
        o.scale0 = 0.6f;
        o.scale1 = 1.4f;
        break;
      case Motion::Shrink:
        o.scale0 = 1.4f;
        o.scale1 = 0.6f;
        break;
      case Motion::Rotate:
        o.angle_span = (o.shape == ObjectShape::Triangle ? 60.f : 45.f) * kPi / 180.f;
        break;
    }
    spec.objects.push_back(o);
  }
  return spec;
}

std::string clip_caption(const ClipSpec& spec) {
  OSP_CHECK(!spec.objects.empty(), "a clip needs at least one object");
  std::string s;
  for (size_t k = 0; k < spec.objects.size(); ++k) {
    const auto& o = spec.objects[k];
    s += (k == 0 ? "a " : " and a ");
    s += object_color(o.color).name;
    s += " ";
    s += shape_name(o.shape);
  }
  const int m = int(spec.objects[0].motion);
  s += " ";
  s += spec.objects.size() == 1 ? kMotionSingular[m] : kMotionPlural[m];
  s += " on a ";
  s += background_color(spec.background_top).name;
  if (spec.two_tone()) {
    s += " and ";
    s += background_color(spec.background_bottom).name;
  }
  s += " background";
  return s;
}

std::string clip_attributes_json(const ClipSpec& spec) {
  json j;
  j["split"] = spec.split == ClipSplit::Train ? "train" : "heldout";
  j["heldout"] = spec.heldout();
  json bg = json::array({background_color(spec.background_top).name});
  if (spec.two_tone()) bg.push_back(background_color(spec.background_bottom).name);
  j["background"] = bg;
  const float W = float(spec.width), H = float(spec.height);
  json objs = json::array();
  for (const auto& o : spec.objects) {
    const ObjectPose p0 = object_pose(o, 0, spec.frames), p1 = object_pose(o, spec.frames - 1, spec.frames);
    objs.push_back({{"color", object_color(o.color).name},
                    {"shape", shape_name(o.shape)},
                    {"motion", motion_name(o.motion)},
                    {"size", round4(o.size / std::min(W, H))},
                    {"start", {round4(p0.cx / W), round4(p0.cy / H)}},
                    {"end", {round4(p1.cx / W), round4(p1.cy / H)}}});
  }
  j["objects"] = objs;
  return j.dump();
}

ClipAttributes parse_clip_attributes(const std::string& text) {
  ClipAttributes a;
  try {
    const json j = json::parse(text);
    for (const auto& b : j.at("background")) a.background.push_back(b.get<std::string>());
    OSP_CHECK(a.background.size() == 1 || a.background.size() == 2, "background must list 1 or 2 colours");
    a.heldout = j.value("heldout", false);
    for (const auto& o : j.at("objects")) {
      IntendedObject io;
      io.color = o.at("color").get<std::string>();
      io.shape = o.at("shape").get<std::string>();
      io.motion = o.at("motion").get<std::string>();
      if (o.contains("start")) {
        io.start_x = o["start"].at(0).get<float>();
        io.start_y = o["start"].at(1).get<float>();
      }
      if (o.contains("end")) {
        io.end_x = o["end"].at(0).get<float>();
        io.end_y = o["end"].at(1).get<float>();
      }
      a.objects.push_back(io);
    }
  } catch (const json::exception& e) {
    fail(str("malformed clip attribute record (", e.what(), "): ", text.substr(0, 200)));
  }
  OSP_CHECK(!a.objects.empty(), "clip attribute record lists no objects: ", text.substr(0, 200));
  return a;
}

ClipAttributes clip_attributes(const ClipSpec& spec) { return parse_clip_attributes(clip_attributes_json(spec)); }

Tensor render_clip(const ClipSpec& spec) {
  const int F = spec.frames, H = spec.height, W = spec.width;
  OSP_CHECK(F >= 1 && H >= 1 && W >= 1, "render_clip: empty clip ", F, "x", H, "x", W);
  Tensor out = Tensor::empty({F, H, W, 3}, DType::U8);
  uint8_t* dst = out.data<uint8_t>();
  const auto top = background_color(spec.background_top).rgb;
  const auto bottom = background_color(spec.background_bottom).rgb;
  const int split_row = H / 2;
#pragma omp parallel for schedule(dynamic, 1) if (int64_t(F) * H * W > (1 << 18))
  for (int f = 0; f < F; ++f) {
    std::vector<float> img(size_t(H) * W * 3);
    for (int y = 0; y < H; ++y) {
      const auto& c = y < split_row ? top : bottom;
      float* row = img.data() + size_t(y) * W * 3;
      for (int x = 0; x < W; ++x)
        for (int ch = 0; ch < 3; ++ch) row[x * 3 + ch] = float(c[ch]);
    }
    for (const auto& o : spec.objects) {
      const ObjectPose p = object_pose(o, f, F);
      const auto col = object_color(o.color).rgb;
      const float reach = p.radius * shape_extent(o.shape) + 2.f;
      const int x0 = std::max(0, int(std::floor(p.cx - reach))), x1 = std::min(W - 1, int(std::ceil(p.cx + reach)));
      const int y0 = std::max(0, int(std::floor(p.cy - reach))), y1 = std::min(H - 1, int(std::ceil(p.cy + reach)));
      const float ca = std::cos(p.angle), sa = std::sin(p.angle);
      for (int y = y0; y <= y1; ++y)
        for (int x = x0; x <= x1; ++x) {
          const float dx = float(x) + 0.5f - p.cx, dy = float(y) + 0.5f - p.cy;
          // Inverse rotation (the shape turns clockwise on screen by p.angle).
          const float qx = ca * dx + sa * dy, qy = -sa * dx + ca * dy;
          const float cov = std::clamp(0.5f - shape_sdf(o.shape, qx, qy, p.radius), 0.f, 1.f);
          if (cov <= 0.f) continue;
          float* px = img.data() + (size_t(y) * W + x) * 3;
          for (int ch = 0; ch < 3; ++ch) px[ch] = px[ch] * (1.f - cov) + float(col[ch]) * cov;
        }
    }
    uint8_t* fr = dst + size_t(f) * H * W * 3;
    for (size_t i = 0; i < img.size(); ++i) fr[i] = uint8_t(std::clamp(img[i], 0.f, 255.f) + 0.5f);  // round half up
  }
  return out;
}

Tensor clip_to_float(const Tensor& rgb8) {
  OSP_CHECK(rgb8.dtype() == DType::U8 && rgb8.dim() == 4 && rgb8.size(3) == 3,
            "clip_to_float expects U8 [F, H, W, 3], got ", rgb8.desc());
  const Tensor src = rgb8.to(Device::cpu()).contiguous();
  const int64_t F = src.size(0), H = src.size(1), W = src.size(2), plane = F * H * W;
  Tensor out = Tensor::empty({3, F, H, W}, DType::F32);
  const uint8_t* s = src.data<uint8_t>();
  float* d = out.data<float>();
#pragma omp parallel for if (plane > (1 << 18))
  for (int64_t i = 0; i < plane; ++i)
    for (int c = 0; c < 3; ++c) d[c * plane + i] = float(s[i * 3 + c]) / 127.5f - 1.f;
  return out;
}

}  // namespace osp::train

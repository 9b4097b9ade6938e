// Procedurally rendered text-to-video training clips (issue 16): one or two coloured shapes that
// move, bounce, grow, shrink or rotate over a plain or two-tone background, with a caption from a
// small grammar and an attribute record. Everything about clip i is a pure function of
// (seed, split, i): the same seed gives the same bytes on any machine and thread count.
//
// Vocabulary (indices are part of the format: the held-out rule and the RNG draws use them):
//   object colours  0 red, 1 yellow, 2 green, 3 cyan, 4 blue, 5 magenta     (saturated)
//   backgrounds     0 black, 1 white, 2 gray, 3 dark blue, 4 dark green, 5 beige (never an object colour)
//   shapes          0 circle, 1 square, 2 triangle, 3 cross, 4 ring
//   motions         0 left_to_right, 1 right_to_left, 2 up, 3 down, 4 bounce, 5 grow, 6 shrink, 7 rotate
// `rotate` is never paired with a circle or a ring (they look the same at every angle).
//
// Captions:
//   one object   "a red circle moves from left to right on a dark blue background"
//   two objects  "a green square and a yellow triangle bounce up and down on a black background"
//   two-tone     "... on a gray and beige background"  (first colour = top half, second = bottom)
// Two objects share the motion and live in separate lanes (top/bottom lanes for horizontal
// motion, left/right lanes otherwise), so they never overlap; the first named object is in the
// top (or left) lane. Colours within a clip are distinct.
//
// Held-out compositions: a (colour c, shape s, motion m) triple is held out iff
// (c + 2·s + 3·m) mod 7 == 0. The train split never contains a held-out triple on any object; the
// held-out split always has one on its first object. Every colour×shape, colour×motion and
// shape×motion pair still occurs in training (tested).
//
// Rendering: each shape is a signed distance field in pixels (centres at x + 0.5, y + 0.5), the
// coverage clamp(0.5 − d, 0, 1) blends the object colour over the background (anti-aliased
// edges), values are rounded to uint8. A two-tone background splits at row H/2 exactly (no blend).
//
// RNG: Philox4x32-10 with key = (seed & 0xffffffff, seed >> 32) and counter =
// (index & 0xffffffff, index >> 32, k, 0xC11B0000 + split) for draw k = 0, 1, ... (split 0 train,
// 1 held-out); each draw gives four uint32 words, used in order.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "osp/core/tensor.h"

namespace osp::train {

enum class ClipSplit : uint8_t { Train = 0, Heldout = 1 };

inline constexpr int kNumObjectColors = 6;
inline constexpr int kNumBackgrounds = 6;
inline constexpr int kNumShapes = 5;
inline constexpr int kNumMotions = 8;

enum class ObjectShape : uint8_t { Circle = 0, Square, Triangle, Cross, Ring };
enum class Motion : uint8_t { LeftToRight = 0, RightToLeft, Up, Down, Bounce, Grow, Shrink, Rotate };

struct NamedColor {
  const char* name;
  std::array<uint8_t, 3> rgb;
};
const NamedColor& object_color(int i);  // 0..kNumObjectColors-1
const NamedColor& background_color(int i);
const char* shape_name(ObjectShape s);
const char* motion_name(Motion m);  // "left_to_right", ...
// Name → index; -1 when unknown.
int object_color_index(const std::string& name);
int background_index(const std::string& name);
int shape_index(const std::string& name);
int motion_index(const std::string& name);

// True for the compositions kept out of training (rule above). Requires a valid triple.
bool is_heldout(int color, ObjectShape s, Motion m);
// Rotation of a rotationally symmetric shape is invisible: circle and ring never rotate.
bool is_valid_composition(ObjectShape s, Motion m);

struct ClipObject {
  int color = 0;
  ObjectShape shape = ObjectShape::Circle;
  Motion motion = Motion::LeftToRight;
  float size = 0;               // nominal radius in pixels at scale 1
  float x0 = 0, y0 = 0;         // centre at the first frame (pixels)
  float x1 = 0, y1 = 0;         // centre at the last frame (pixels)
  float bounce_height = 0;      // pixels (bounce only)
  float angle0 = 0;             // radians, clockwise on screen
  float angle_span = 0;         // radians over the clip (rotate only)
  float scale0 = 1, scale1 = 1; // size multiplier at the first / last frame (grow, shrink)
};

struct ClipSpec {
  int width = 256, height = 256, frames = 17;
  ClipSplit split = ClipSplit::Train;
  int64_t index = 0;
  uint64_t seed = 0;
  int background_top = 0, background_bottom = 0;  // equal = plain background
  std::vector<ClipObject> objects;                // 1 or 2; objects[0] is named first

  bool two_tone() const { return background_top != background_bottom; }
  bool heldout() const;  // any object holds a held-out triple
};

// The geometry of one object at frame f (what the renderer draws).
struct ObjectPose {
  float cx, cy, radius, angle;
};
ObjectPose object_pose(const ClipObject& o, int frame, int frames);
// The largest distance from the centre to the shape's outline, in units of the nominal radius.
float shape_extent(ObjectShape s);

// Clip (seed, split, index) at the given size. width, height ≥ 32; frames ≥ 2.
ClipSpec sample_clip(uint64_t seed, ClipSplit split, int64_t index, int width, int height, int frames);

// Caption from the grammar above.
std::string clip_caption(const ClipSpec& spec);
// Attribute record as JSON text:
//   {"split":"train","heldout":false,"background":["dark blue"] | ["gray","beige"],
//    "objects":[{"color":"red","shape":"circle","motion":"left_to_right","size":0.142,
//                "start":[0.21,0.50],"end":[0.79,0.50]}]}
// (size = nominal radius / min(W, H); start/end = centre / (W, H) at the first / last frame).
std::string clip_attributes_json(const ClipSpec& spec);

// What an evaluation needs back from a record: names only.
struct IntendedObject {
  std::string color, shape, motion;
  float start_x = 0.5f, start_y = 0.5f, end_x = 0.5f, end_y = 0.5f;
};
struct ClipAttributes {
  std::vector<std::string> background;  // 1 (plain) or 2 (top, bottom)
  std::vector<IntendedObject> objects;
  bool heldout = false;
};
// Parses clip_attributes_json() output; throws osp::Error on a malformed record.
ClipAttributes parse_clip_attributes(const std::string& json_text);
ClipAttributes clip_attributes(const ClipSpec& spec);

// Renders the clip: CPU U8 [F, H, W, 3] (RGB). Frames are rendered in parallel; the bytes do not
// depend on the thread count.
Tensor render_clip(const ClipSpec& spec);
// U8 [F, H, W, 3] → F32 [3, F, H, W] in [-1, 1] (x = u / 127.5 − 1), the VAE encoder's input.
Tensor clip_to_float(const Tensor& rgb8);

}  // namespace osp::train

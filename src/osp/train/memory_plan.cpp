// Per-GPU memory plan of distributed DiT training (train/memory_plan.h).
#include "osp/train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "osp/parallel/communicator.h"
#include "osp/parallel/sequence_parallel.h"
#include "osp/model/dit.h"

namespace osp::train {

void latent_from_video(int64_t frames, int64_t height, int64_t width, MemoryPlanInput& in) {
  OSP_CHECK(frames >= 1 && (frames - 1) % 4 == 0, "memory plan: frames must be 4n + 1, got ",
            frames);
  OSP_CHECK(height > 0 && width > 0 && height % 16 == 0 && width % 16 == 0,
            "memory plan: height and width must be positive multiples of 16, got ", height, "x",
            width);
  in.latent_t = (frames - 1) / 4 + 1;
  in.latent_h = height / 8;
  in.latent_w = width / 8;
}

MemoryPlan plan_train_memory(const MemoryPlanInput& in) {
  const model::DiTConfig& c = in.cfg;
  OSP_CHECK(in.sp_size >= 1 && in.dp_size >= 1 && in.batch >= 1, "memory plan: sp_size, dp_size ",
            "and batch must be >= 1");
  OSP_CHECK(in.sp == "ssp" || in.sp == "ulysses" || in.sp == "none",
            "memory plan: sp must be ssp, ulysses or none, got '", in.sp, "'");
  OSP_CHECK(in.sp != "none" || in.sp_size == 1, "memory plan: sp none needs sp_size 1");
  OSP_CHECK(in.act_bytes == 2 || in.act_bytes == 4, "memory plan: act_bytes must be 2 or 4");
  OSP_CHECK(in.latent_h % c.patch_h == 0 && in.latent_w % c.patch_w == 0,
            "memory plan: the latent ", in.latent_h, "x", in.latent_w,
            " is not a multiple of the patch");
  OSP_CHECK(!in.sharded_gradients || in.sharded_state, "memory plan: gradient sharding needs sharded state");
  OSP_CHECK(!in.sharded_weights || in.sharded_gradients, "memory plan: weight sharding needs gradient sharding");
  MemoryPlan out;
  // parameters per block (blocks.<i>.*) and outside the blocks: what gradient sharding keeps
  std::vector<double> block_params(size_t(c.num_layers), 0.0);
  double outside = 0;
  for (const auto& [name, shape] : model::DiT::expected_shapes(c)) {
    out.params += shape_numel(shape);
    if (name.rfind("blocks.", 0) == 0)
      block_params.at(size_t(std::stoll(name.substr(7)))) += double(shape_numel(shape));
    else
      outside += double(shape_numel(shape));
  }
  const double block_max = block_params.empty() ? 0.0 : *std::max_element(block_params.begin(), block_params.end());
  parallel::ForwardPlan plan;
  plan.grid = {in.latent_t, in.latent_h / c.patch_h, in.latent_w / c.patch_w};
  plan.kinds = in.kinds.empty()
                   ? std::vector<sparse::BlockKind>(size_t(c.num_layers), sparse::BlockKind::Full)
                   : in.kinds;
  OSP_CHECK(int64_t(plan.kinds.size()) == c.num_layers, "memory plan: ", plan.kinds.size(),
            " block kinds for ", c.num_layers, " blocks");
  plan.P = in.P;
  plan.heads = int(c.num_heads);
  plan.head_dim = int(c.head_dim());
  plan.device = Device::cpu();
  const int64_t N = plan.grid.numel();
  out.tokens = N;
  // rows of every block on the busiest rank: the real layout tables of every rank
  const int S = in.sp_size;
  std::vector<int64_t> rows(plan.kinds.size(), 0);
  for (int r = 0; r < S; ++r) {
    std::shared_ptr<parallel::Communicator> comm = parallel::make_counting_communicator(S, r);
    auto sp = in.sp == "ulysses" ? parallel::make_ulysses(comm)
              : in.sp == "ssp"   ? parallel::make_ssp(comm)
                                 : parallel::make_single_device();
    sp->setup(plan);
    for (size_t i = 0; i < rows.size(); ++i)
      rows[i] = std::max(rows[i], sp->rope_table(int(i)).size(1));
  }
  out.rows_max = *std::max_element(rows.begin(), rows.end());
  const double B = double(in.batch), d = double(c.dim), f = double(c.ffn_dim), H = double(c.num_heads);
  const double Lt = double(c.text_len), a = double(in.act_bytes), P = double(out.params);
  const double K = double(c.in_dim * c.patch_volume()), Kout = double(c.out_dim * c.patch_volume());
  // One block's tape on n rows (dit_layers.cpp, unquantised): 16 act [n, d] (h, q, k, v, qr, kr,
  // o, o-in, y, h3, cq_pre, cq, oc, oc-in, h2, y3), 3 F32 [n, d] residual copies (x0, x1, x2),
  // 2 act [n, ffn] (f1_pre, f1; not with ffn_chunks), 2 F32 lse [H, n]; cross-attention
  // keys/values 3 act [Lt, d].
  const bool ffn_chunked = in.ffn_chunks > 1;
  auto tape = [&](double n) {
    return B * n * (16 * d * a + (ffn_chunked ? 0 : 2 * f * a) + 3 * d * 4 + 2 * H * 4) + B * Lt * d * 3 * a;
  };
  // Backward scratch of a block: ~6 F32 [n, d] (dx, dh, dq/dk/dv, ...) and the FFN's two act
  // [n, ffn] (dL/d GELU output, dL/d fc1 output) — with ffn_chunks four act [⌈B·n / chunks⌉, ffn]
  // (the recomputed fc1 output and GELU, and those two gradients, of one chunk).
  auto scratch = [&](double n) {
    return B * n * 6 * d * 4 + (ffn_chunked ? 4 * std::ceil(B * n / in.ffn_chunks) * f * a : B * n * 2 * f * a);
  };
  // Kept self-attention results (keep_attention): o act [n, d] + lse F32 [H, n] per block.
  const bool keep_attn = in.activation_checkpointing && in.keep_attention;
  // Offloaded checkpoints: the inputs are in host memory (host_ckpt); the device holds two
  // staging buffers of the largest block input.
  const bool offload = in.activation_checkpointing && in.offload_block_inputs;
  double ckpt = 0, kept_attn = 0, tape_max = 0, scratch_max = 0, host_ckpt = 0, input_max = 0;
  std::vector<double> saved;  // per block: what the forward keeps on the device for its backward
  for (int64_t n : rows) {
    const double attn = keep_attn ? B * double(n) * (d * a + H * 4) : 0.0;
    const double input = B * double(n) * d * 4;
    input_max = std::max(input_max, input);
    if (offload) host_ckpt += input;
    saved.push_back((in.activation_checkpointing ? (offload ? 0.0 : input) : tape(double(n))) + attn);
    ckpt += saved.back() - attn;
    kept_attn += attn;
    tape_max = std::max(tape_max, tape(double(n)));
    scratch_max = std::max(scratch_max, scratch(double(n)));
  }
  // Released gradients: in block i's backward (blocks run last to first) blocks 0..i still hold
  // what the forward saved and blocks i..L−1 hold gradients; the worst moment over i, less the
  // saved total (its own line), is what the block gradients add.
  double released_extra = 0;
  if (in.released_gradients && !in.sharded_gradients) {
    const size_t L = saved.size();
    std::vector<double> suffix_grads(L + 1, 0.0);
    for (size_t j = L; j-- > 0;) suffix_grads[j] = suffix_grads[j + 1] + block_params[j] * 4;
    double prefix_saved = 0, worst = 0;
    for (size_t i = 0; i < L; ++i) {
      prefix_saved += saved[i];
      worst = std::max(worst, prefix_saved + suffix_grads[i]);
    }
    released_extra = std::max(0.0, worst - ckpt - kept_attn);
  }
  const double shard_ranks = in.sharded_state ? double(S) * in.dp_size : 1.0;
  const double n_max = double(out.rows_max);
  bool ulysses = false;  // any Ulysses layout with more than one rank
  if (S > 1)
    for (auto k : plan.kinds)
      ulysses |= k == sparse::BlockKind::Full || S > plan.P * plan.P;
  const double exch = ulysses ? 4 * 5 * B * n_max * d * a : 2 * B * n_max * d * 4;
  // gradient sharding on several ranks: a block's packed F32 gradients (+ the received chunk)
  // stay in flight while the next block's backward runs (ShardedAdamW::end_group)
  const double inflight = in.sharded_gradients && shard_ranks > 1 ? block_max * 4 * (1 + 1 / shard_ranks) : 0.0;
  char host_gib[32];
  std::snprintf(host_gib, sizeof host_gib, "%.2f GiB", host_ckpt / double(1ull << 30));
  out.host = host_ckpt;
  out.lines = {
      in.sharded_weights || in.transient_weights
          ? MemoryLine{"weights", (outside + block_max) * a,
                       std::string("compute copy of the parameters outside the blocks + the block in use (") +
                           (in.sharded_weights ? "sharded" : "transient") + " weights)"}
          : MemoryLine{"weights", P * a, "compute copy of every parameter, every rank"},
      in.sharded_gradients
          ? MemoryLine{"gradients", (outside + block_max) * 4,
                       "F32, the parameters outside the blocks + the block in its backward (sharded gradients)"}
      : in.released_gradients
          ? MemoryLine{"gradients", outside * 4 + released_extra,
                       offload ? "F32, outside the blocks + the blocks' beyond the kept attention they replace "
                                 "(released gradients; the inputs are on the host)"
                               : "F32, outside the blocks + the blocks' beyond the saved inputs they replace "
                                 "(released gradients)"}
          : MemoryLine{"gradients", P * 4, "F32, every parameter, every rank"},
      {"optimizer state", in.sharded_state ? 16 * P / shard_ranks : 12 * P,
       in.sharded_state ? "F32 master + m + v + gradient of the shard over " + std::to_string(int64_t(shard_ranks)) +
                              " ranks (ShardedAdamW)"
                        : std::string("F32 master + m + v, unsharded")},
      offload ? MemoryLine{"block inputs", 2 * input_max,
                           std::string("two staging buffers; every block's F32 rows (") + host_gib +
                               ") in pinned host memory (--offload-checkpoints)"}
              : MemoryLine{in.activation_checkpointing ? "block inputs" : "block tapes", ckpt,
                           in.activation_checkpointing ? "activation checkpointing: F32 rows of every block"
                                                       : "no checkpointing: every block's tape"},
      {"block tape", in.activation_checkpointing ? tape_max : 0,
       in.activation_checkpointing ? "one block recomputed for its backward" : "(in block tapes)"},
      {"backward scratch", scratch_max, "one block's activation gradients"},
      {"full-sequence tensors", B * N * (2 * d * 4 + d * a + K * a + 2 * Kout * 4),
       "x_full and its gradient (F32 [N, dim]), patch embedding, head output and its gradient"},
      {"communication buffers", exch + 2 * double(in.bucket_bytes) + inflight,
       std::string(ulysses ? "Ulysses backward exchange (5 tensors, send + recv + copies) + reduction buckets"
                           : "layout exchange (send + recv) + reduction buckets") +
           (inflight > 0 ? " + one block's gradients in flight (packed, reduce-scattered during the next block)" : "")},
  };
  if (in.lora_params > 0) {  // LoRA: the base frozen, the adapters trained (unsharded, resident)
    OSP_CHECK(!in.sharded_state && !in.transient_weights, "memory plan: LoRA fine-tuning keeps its state unsharded");
    const double lp = double(in.lora_params);
    out.lines[0] = {"weights", P * a + lp * a, "compute copy of the frozen base + the LoRA adapters"};
    out.lines[1] = {"gradients", lp * 4, "F32, the LoRA adapters only"};
    out.lines[2] = {"optimizer state", lp * 12, "F32 master + m + v of the LoRA adapters"};
  }
  if (keep_attn)
    out.lines.insert(out.lines.begin() + 4,
                     MemoryLine{"kept attention", kept_attn,
                                "self-attention output + log-sum-exp of every block (--keep-attention: no "
                                "attention in the recompute)"});
  if (in.sharded_weights && in.prefetch_weights)
    out.lines.insert(out.lines.begin() + 1,
                     MemoryLine{"weight gather buffer", block_max * a,
                                "staging of the next block's prefetched gather (in the compute dtype)"});
  for (const auto& l : out.lines) out.total += l.bytes;
  out.fits = in.capacity_bytes <= 0 || out.total <= in.capacity_bytes;
  out.capacity = in.capacity_bytes;
  return out;
}

std::string MemoryPlan::table() const {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%lld parameters, %lld tokens, at most %lld rows per rank\n",
                (long long)params, (long long)tokens, (long long)rows_max);
  s += buf;
  for (const auto& l : lines) {
    std::snprintf(buf, sizeof buf, "  %-22s %9.2f GiB  %s\n", l.what.c_str(), l.bytes / (1ull << 30),
                  l.note.c_str());
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "  %-22s %9.2f GiB\n", "total per GPU", total / (1ull << 30));
  s += buf;
  if (capacity > 0) {
    std::snprintf(buf, sizeof buf, "  %-22s %9.2f GiB  %s\n", "device", capacity / (1ull << 30),
                  fits ? "fits" : "does NOT fit");
    s += buf;
  }
  return s;
}

}  // namespace osp::train

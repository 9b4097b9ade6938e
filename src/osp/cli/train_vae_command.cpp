// OSP-Next-Tiny commands (issue 16):
//   osp train-vae          a small Wan-VAE trained for reconstruction on a clip dataset
//   osp make-text-encoder  caption tokenizer (SentencePiece) + frozen random umT5 into a model folder
//   osp encode-clips       clip dataset → latent cache for `osp train` (umT5 + the trained VAE)
// scripts/train-tiny.sh chains them with make-dataset, osp train and osp eval; docs/MODEL_CARD_TINY.md.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>
#include <string>

#include "osp/cli/data_commands.h"
#include "osp/cli/run_command.h"
#include "osp/core/interrupt.h"
#include "osp/core/log.h"
#include "osp/pipeline/tiny_model.h"
#include "osp/train/vae_trainer.h"

namespace osp::cli {

void add_tiny_model_commands(CLI::App& app) {
  {
    auto o = std::make_shared<train::VaeTrainOptions>();
    auto* c = app.add_subcommand("train-vae", "train a small Wan-VAE for reconstruction on a clip dataset (osp make-dataset)");
    c->add_option("--data", o->data, "training clips (osp make-dataset folder)")->required();
    c->add_option("--eval-data", o->eval_data, "held-out clips: reconstruction PSNR");
    c->add_option("-o,--out", o->out, "run folder: Wan2.1_VAE.safetensors, vae_log.jsonl, vae_eval.json")->required();
    c->add_option("--init", o->init, "start from these VAE weights (safetensors)");
    c->add_option("--device", o->device, "cpu | cuda | cuda:N")->capture_default_str();
    c->add_option("--dim", o->dim, "base width (Wan2.1: 96)")->capture_default_str();
    c->add_option("--res-blocks", o->res_blocks, "residual blocks per encoder stage (2 = Wan; osp generate loads 2)")
        ->capture_default_str();
    c->add_option("--steps", o->steps, "optimizer steps")->capture_default_str();
    c->add_option("--batch", o->batch, "clips per step")->capture_default_str();
    c->add_option("--lr", o->lr, "peak learning rate (AdamW)")->capture_default_str();
    c->add_option("--warmup", o->warmup, "linear warm-up steps, then cosine")->capture_default_str();
    c->add_option("--min-lr-ratio", o->min_lr_ratio, "final lr / peak lr")->capture_default_str();
    c->add_option("--weight-decay", o->weight_decay, "AdamW weight decay")->capture_default_str();
    c->add_option("--clip", o->clip, "global gradient-norm clip (0 = off)")->capture_default_str();
    c->add_option("--kl-weight", o->kl_weight, "KL weight (0: plain autoencoder, z = mu)")->capture_default_str();
    c->add_option("--recon", o->recon, "mse | l1")->capture_default_str();
    c->add_option("--seed", o->seed, "weights, clip order, posterior noise")->capture_default_str();
    c->add_option("--eval-every", o->eval_every, "held-out PSNR every N steps (0: at the end)")->capture_default_str();
    c->add_option("--eval-clips", o->eval_clips, "held-out clips scored")->capture_default_str();
    c->add_option("--calib-clips", o->calib_clips, "clips for the latent calibration (0: none)")->capture_default_str();
    c->add_option("--save-every", o->save_every, "also write the weights every N steps")->capture_default_str();
    c->add_option("--max-seconds", o->max_seconds, "also stop after this wall time (the cosine lr follows the time)")
        ->capture_default_str();
    c->add_flag("--overwrite", o->overwrite, "replace a previous run's files in --out");
    c->add_flag("--no-progress", o->quiet, "no progress line");
    c->add_flag("--eval-only", o->eval_only, "with --init and --eval-data: only the held-out evaluation");
    c->add_option("--recon-out", o->recon_out, "held-out reconstructions as safetensors (osp eval --pred)");
    c->callback([c, o]() {
      run_command(*c, [&]() {
        install_interrupt_handler("the weights trained so far will be written");
        const train::VaeTrainResult r = train::train_vae(*o);
        std::printf("train-vae: %lld steps, loss %.5f -> %.5f", static_cast<long long>(r.steps), r.first_loss,
                    r.last_loss);
        if (r.eval.clips) std::printf(", held-out PSNR %.2f dB (min %.2f) over %lld clips", r.eval.mean_psnr,
                                      r.eval.min_psnr, static_cast<long long>(r.eval.clips));
        std::printf("\n");
        if (!r.weights.empty()) std::printf("wrote %s\n", r.weights.c_str());
        return 0;
      });
    });
  }
  {
    auto o = std::make_shared<pipeline::TextEncoderOptions>();
    auto* c = app.add_subcommand("make-text-encoder",
                                 "caption tokenizer (SentencePiece word model) + frozen random umT5 into a model folder");
    c->add_option("--dataset", o->dataset, "clip dataset whose captions train the tokenizer")->required();
    c->add_option("-o,--out", o->out, "model folder")->required();
    c->add_option("--seed", o->seed, "encoder weight seed")->capture_default_str();
    c->add_option("--dim", o->dim, "umT5 width")->capture_default_str();
    c->add_option("--layers", o->layers, "umT5 blocks")->capture_default_str();
    c->add_option("--heads", o->heads, "umT5 heads")->capture_default_str();
    c->add_option("--ffn", o->ffn, "umT5 FFN width")->capture_default_str();
    c->add_option("--vocab", o->vocab, "embedding rows (>= the tokenizer's pieces)")->capture_default_str();
    c->callback([c, o]() {
      run_command(*c, [&]() {
        pipeline::write_text_encoder(*o);
        log_info("wrote the caption tokenizer and a frozen random umT5 to ", o->out);
        return 0;
      });
    });
  }
  {
    auto o = std::make_shared<pipeline::EncodeClipsOptions>();
    auto* c = app.add_subcommand("encode-clips", "clip dataset -> latent cache for osp train (umT5 + Wan-VAE encoder)");
    c->add_option("-m,--model", o->model, "folder with the umT5, tokenizer and Wan2.1_VAE.safetensors")->required();
    c->add_option("--dataset", o->dataset, "clip dataset (osp make-dataset)")->required();
    c->add_option("-o,--out", o->out, "latent cache folder")->required();
    c->add_option("--device", o->device, "cpu | cuda | cuda:N")->capture_default_str();
    c->add_option("--text-len", o->text_len, "umT5 sequence length (= the DiT config's text_len)")->capture_default_str();
    c->add_option("--limit", o->limit, "encode only the first N clips (0: all)")->capture_default_str();
    c->add_option("--samples-per-shard", o->per_shard, "samples per cache shard")->capture_default_str();
    c->add_option("--max-seconds", o->max_seconds, "stop adding clips after this wall time")->capture_default_str();
    c->add_flag("--overwrite", o->overwrite, "replace an existing cache");
    c->callback([c, o]() {
      run_command(*c, [&]() {
        install_interrupt_handler();
        const int64_t n = pipeline::encode_clip_dataset(*o);
        log_info("wrote a latent cache of ", n, " samples to ", o->out);
        return 0;
      });
    });
  }
}

}  // namespace osp::cli

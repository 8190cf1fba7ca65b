#!/usr/bin/env bash
# Reproduce the mixture-of-softmaxes numbers (Yang, Dai, Salakhutdinov & Cohen, "Breaking the Softmax
# Bottleneck", ICLR 2018, arXiv 1711.03953), all three stages of the recipe in one run folder each:
#
#                                          training        + fine-tuning     + dynamic evaluation
#   PTB         configs/ptb-mos.yaml       58.08 / 55.97     56.54 / 54.44     48.33 / 47.69   (valid / test)
#   WikiText-2  configs/wt2-mos.yaml       66.01 / 63.33     63.88 / 61.45     42.41 / 40.68
#
# and the rank of the PTB validation log-prob matrix, 9,981 of 10,000 (softmax: 400). Fine-tuning is the
# MoS code's finetune.py (averaged SGD restarted from the best checkpoint, lr 25 on PTB and 20 on WikiText-2,
# stopped by the non-monotone trigger); dynamic evaluation is its dynamiceval.py (lr 0.002; PTB lambda 0.075,
# WikiText-2 epsilon 0.002). result.json holds val_ppl / test_ppl (the best weights after fine-tuning) and
# val_ppl_dynamic / test_ppl_dynamic; the valid lines of metrics.jsonl show the numbers before fine-tuning.
#
# On a GPU machine with the full corpora (downloaded through `datasets`; or add data.path=FOLDER): the suite
# configs/suites/paper-mos.yaml trains both runs, measures the rank of each model's log-prob matrix over the
# whole validation set with the state carried (the MoS paper's protocol) and writes the summary table and
# plots in OUTPUT_DIR.
#
#   scripts/reproduce_mos.sh                         # both corpora, run.device=cuda, into runs/paper-mos
#   OUTPUT_DIR=runs/x DEVICE=cuda:1 scripts/reproduce_mos.sh train.seed=2    # extra overrides go to every run
#   scripts/reproduce_mos.sh train.finetune_epochs=0 train.dynamic_eval=false  # the first stage only
#
# Several GPUs: the same runs train under torchrun (softmax-bench train configs/ptb-mos.yaml run.device=cuda
# launched with torchrun --nproc_per_node=N -m lm.cli); the folders are ordinary run folders afterwards.
# A killed run resumes from its checkpoint (in whichever stage) when the script runs again; finished runs
# and finished rank reports are skipped.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/paper_suite.sh" paper-mos "$@"

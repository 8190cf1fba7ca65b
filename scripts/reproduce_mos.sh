#!/usr/bin/env bash
# Reproduce the mixture-of-softmaxes numbers (Yang, Dai, Salakhutdinov & Cohen, "Breaking the Softmax
# Bottleneck", ICLR 2018, arXiv 1711.03953), before fine-tuning:
#
#   PTB         configs/ptb-mos.yaml   valid 58.08  test 55.97; rank of the validation log-prob matrix 9,981
#                                      of 10,000 (softmax: 400)
#   WikiText-2  configs/wt2-mos.yaml   valid 66.01  test 63.33
#
# on a GPU machine with the full corpora (downloaded through `datasets`; or add data.path=FOLDER): the suite
# configs/suites/paper-mos.yaml trains both runs, measures the rank of each model's log-prob matrix over the
# whole validation set with the state carried (the MoS paper's protocol) and writes the summary table and
# plots in OUTPUT_DIR.
#
#   scripts/reproduce_mos.sh                         # both corpora, run.device=cuda, into runs/paper-mos
#   OUTPUT_DIR=runs/x DEVICE=cuda:1 scripts/reproduce_mos.sh train.seed=2    # extra overrides go to every run
#
# Not supported by the trainer, so not reproduced: the fine-tuning stage (the MoS code's finetune.py, averaged
# SGD restarted from the best checkpoint; paper: PTB 56.54 / 54.44, WT2 63.88 / 61.45) and dynamic evaluation.
# Compare with the papers' numbers "w/o finetune". A killed run resumes from its checkpoint when the script runs again; finished runs
# and finished rank reports are skipped.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/paper_suite.sh" paper-mos "$@"

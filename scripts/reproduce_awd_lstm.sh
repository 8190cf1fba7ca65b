#!/usr/bin/env bash
# Reproduce the AWD-LSTM numbers (Merity, Keskar & Socher, ICLR 2018, arXiv 1708.02182) with both later
# stages, one run folder each:
#
#                                            training       + fine-tuning    + dynamic evaluation (Krause et al. 2018)
#   PTB         configs/ptb-awd-lstm.yaml    60.7 / 58.8      60.0 / 57.3      51.6 / 51.1   (valid / test)
#   WikiText-2  configs/wt2-awd-lstm.yaml    69.1 / 66.0      68.6 / 65.8      46.4 / 44.3
#
# Fine-tuning is AWD-LSTM's finetune.py (averaged SGD restarted from the best checkpoint, lr 30, stopped by
# the non-monotone trigger); dynamic evaluation uses the update of the MoS code's dynamiceval.py with
# Krause et al.'s AWD-LSTM settings (lr 0.002, lambda 0.02, epsilon 0.001). result.json holds val_ppl /
# test_ppl (best weights after fine-tuning) and val_ppl_dynamic / test_ppl_dynamic. Not reproduced: the
# neural cache.
#
# On a GPU machine with the full corpora (downloaded through `datasets`; or add data.path=FOLDER): the suite
# configs/suites/paper-awd-lstm.yaml trains both runs, measures the rank of each model's log-prob matrix over the
# whole validation set with the state carried (the MoS paper's protocol) and writes the summary table and
# plots in OUTPUT_DIR.
#
#   scripts/reproduce_awd_lstm.sh                         # both corpora, run.device=cuda, into runs/paper-awd-lstm
#   OUTPUT_DIR=runs/x DEVICE=cuda:1 scripts/reproduce_awd_lstm.sh train.seed=2    # extra overrides go to every run
#   scripts/reproduce_awd_lstm.sh train.finetune_epochs=0 train.dynamic_eval=false  # the first stage only
#
# A killed run resumes from its checkpoint (in whichever stage) when the script runs again; finished runs
# and finished rank reports are skipped.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/paper_suite.sh" paper-awd-lstm "$@"

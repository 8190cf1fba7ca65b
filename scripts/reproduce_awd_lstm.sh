#!/usr/bin/env bash
# Reproduce the AWD-LSTM numbers (Merity, Keskar & Socher, ICLR 2018, arXiv 1708.02182), before fine-tuning:
#
#   PTB         configs/ptb-awd-lstm.yaml   valid 60.7  test 58.8 (paper, w/o fine-tuning; fine-tuned 60.0 / 57.3)
#   WikiText-2  configs/wt2-awd-lstm.yaml   valid 69.1  test 66.0 (paper, w/o fine-tuning; fine-tuned 68.6 / 65.8)
#
# on a GPU machine with the full corpora (downloaded through `datasets`; or add data.path=FOLDER): the suite
# configs/suites/paper-awd-lstm.yaml trains both runs, measures the rank of each model's log-prob matrix over the
# whole validation set with the state carried (the MoS paper's protocol) and writes the summary table and
# plots in OUTPUT_DIR.
#
#   scripts/reproduce_awd_lstm.sh                         # both corpora, run.device=cuda, into runs/paper-awd-lstm
#   OUTPUT_DIR=runs/x DEVICE=cuda:1 scripts/reproduce_awd_lstm.sh train.seed=2    # extra overrides go to every run
#
# Not supported by the trainer, so not reproduced: the fine-tuning stage (AWD-LSTM's finetune.py, averaged SGD
# restarted from the best checkpoint), the neural cache and dynamic evaluation. Compare with the papers'
# numbers "w/o finetune". A killed run resumes from its checkpoint when the script runs again; finished runs
# and finished rank reports are skipped.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/paper_suite.sh" paper-awd-lstm "$@"

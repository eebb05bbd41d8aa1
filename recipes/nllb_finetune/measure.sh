#!/bin/bash
# The forgetting experiment of recipes/nllb_finetune/README.md ("Measured"), end to end:
# a model on 6 of the demo's 7 languages, extended with hin_Deva by nmt.vocab add-language and
# fine-tuned with and without replay, against all 7 from the start at the same number of updates.
# Every run is step-limited (one intra-op thread), so the results do not depend on machine load.
#   bash recipes/nllb_finetune/measure.sh            # demo-size model (xs), N6=2000 F=500
#   MODEL=base N6=40000 F=10000 bash recipes/nllb_finetune/measure.sh   # base size (hours)
# Needs the demo corpus (make demo builds data/demo). Steps already done are skipped.
set -euo pipefail
PY=${PY:-python}; D=${DATA:-data}; R=${OUT:-outputs/forgetting}; MODEL=${MODEL:-xs}
N6=${N6:-2000}; F=${F:-500}; N7=$((N6 + F))
OLD=(rus_Cyrl zho_Hans jpn_Jpan ell_Grek heb_Hebr arb_Arab)
T="trainer.threads=1 trainer.max_time_minutes=0"  # M: from scratch only (the fine-tune takes the model from init_from)
M="model=$MODEL"
mkdir -p "$R"
if [ ! -f "$D/demo6/bin/meta.json" ]; then
  $PY -m data_prep.demo_corpus --out "$D/demo6" --langs "${OLD[@]}"
  $PY -m data_prep.train_spm --corpus "$D/demo6" --vocab-size 8000
  $PY -m data_prep.binarize --corpus "$D/demo6"
fi
[ -f "$R/m6/checkpoints/best.pt" ] || $PY -m nmt.train +recipe=demo $M $T trainer.max_steps=$N6 \
    data.corpus="$D/demo6" hydra.run.dir="$R/m6"
cat "$D/demo/bitext/train/eng_Latn-hin_Deva.hin_Deva" > "$R/hin.txt"
cat "$D"/demo6/bitext/train/*.eng_Latn > "$R/eng.txt"
[ -d "$R/m6_hin" ] || $PY -m nmt.vocab add-language "$R/m6/checkpoints/best.pt" "$R/m6_hin" --lang hin_Deva \
    --text "$R/hin.txt" --new-pieces 1000 --old-text "$R/eng.txt" | tee "$R/add_language.txt"
if [ ! -d "$D/demo_ft" ]; then
  cp -r "$D/demo" "$D/demo_ft"
  $PY -m data_prep.binarize --corpus "$D/demo_ft" --spm "$R/m6_hin/spm.model" --overwrite
fi
# the demo recipe's batch, dropout and sampling temperature, so that only the starting point differs
FT="+recipe=nllb_finetune trainer.init_from=$R/m6_hin data.corpus=$D/demo_ft $T trainer.max_steps=$F
    data.max_tokens=1024 model.dropout=0.0 optim.lr=2e-3 optim.warmup_steps=100 sampling.temperature=2.0"
[ -f "$R/ft_replay/checkpoints/best.pt" ] || $PY -m nmt.train $FT hydra.run.dir="$R/ft_replay"
[ -f "$R/ft_noreplay/checkpoints/best.pt" ] || $PY -m nmt.train $FT hydra.run.dir="$R/ft_noreplay" \
    "data.directions=[eng_Latn-hin_Deva,hin_Deva-eng_Latn]"
[ -f "$R/m7/checkpoints/best.pt" ] || $PY -m nmt.train +recipe=demo $M $T trainer.max_steps=$N7 \
    data.corpus="$D/demo" hydra.run.dir="$R/m7"
E="flores.dir=$D/demo/flores split=devtest batch_size=200"
old_dirs=$(for l in "${OLD[@]}"; do printf "eng_Latn-%s,%s-eng_Latn," "$l" "$l"; done)
[ -f "$R/eval/m6/results.json" ] || $PY -m nmt.evaluate ckpt="$R/m6/checkpoints/best.pt" $E \
    out_dir="$R/eval/m6" "directions=[${old_dirs%,}]"
for r in m7 ft_replay ft_noreplay; do
  [ -f "$R/eval/$r/results.json" ] || $PY -m nmt.evaluate ckpt="$R/$r/checkpoints/best.pt" $E \
      out_dir="$R/eval/$r" reference_results="$R/eval/m6/results.json"
done
grep -H -E "mean Δ|new directions" "$R"/eval/*/results.md

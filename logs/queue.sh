#!/bin/bash
cd /work/main
for g in "configs/ablation_mian.py:dataset=synthetic" "configs/ablation_mian.py:dataset=ml-100k"; do
  n=$(echo $g | tr '/:=' '___')
  s=$(date +%s); echo "START $g $(date)" >> logs/queue.log
  ./run.sh "$g" > logs/$n.log 2>&1
  echo "END $g rc=$? $(( $(date +%s)-s ))s $(date)" >> logs/queue.log
done

#!/bin/bash
cd /work/main
while pgrep -f logs/queue.sh > /dev/null; do sleep 20; done
for g in "configs/ablation_din_reg.py" "configs/ablation_autoint.py"; do
  n=$(echo $g | tr '/:=' '___')
  s=$(date +%s); echo "START $g $(date)" >> logs/queue.log
  ./run.sh "$g" > logs/$n.log 2>&1
  echo "END $g rc=$? $(( $(date +%s)-s ))s $(date)" >> logs/queue.log
done

#!/bin/bash
cd /work/main
while pgrep -f "ablation_din_reg.py" > /dev/null; do sleep 10; done
echo "END configs/ablation_din_reg.py $(date)" >> logs/queue.log
g="configs/ablation_din.py:dataset=ml-100k"
s=$(date +%s); echo "START $g $(date)" >> logs/queue.log
./run.sh "$g" > logs/din_ml100k.log 2>&1
echo "END $g rc=$? $(( $(date +%s)-s ))s $(date)" >> logs/queue.log

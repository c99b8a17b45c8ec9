#!/bin/bash
cd /work/main
while pgrep -f logs/queue3.sh > /dev/null; do sleep 10; done
g="configs/ablation_din_reg.py:dataset=ml-100k"
s=$(date +%s); echo "START $g $(date)" >> logs/queue.log
./run.sh "$g" > logs/din_reg_ml100k.log 2>&1
echo "END $g rc=$? $(( $(date +%s)-s ))s $(date)" >> logs/queue.log

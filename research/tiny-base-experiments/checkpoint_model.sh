#!/bin/bash
# $1 run dir, $2 base dir, $3 out dir: the newest checkpoint's weights as a model dir
set -e
d=$(python3 -c "import json;print(json.load(open('$1/checkpoints/state.json'))['dir'])")
rm -rf $3; cp -r $2 $3; cp $1/checkpoints/$d/model.safetensors $3/model.safetensors; echo $d

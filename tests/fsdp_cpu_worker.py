"""``mllm.model.train_worker`` under FSDP2 on CPU processes (gloo), for the distributed tests.

accelerate routes FSDP only to accelerators (on CPU it falls back to DDP), while torch's ``fully_shard``
runs on CPU with gloo. This entry point sets accelerate's state to FSDP2 after it is created, so the
training code runs its FSDP2 path for real: sharded parameters (DTensors), the joint prepare that FSDP2
requires, its checkpoints and its export."""

import sys

import accelerate
from accelerate import FullyShardedDataParallelPlugin
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = accelerate.Accelerator.__init__


def _fsdp2_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    PartialState().distributed_type = DistributedType.FSDP  # the process state, which accelerate re-reads
    state = AcceleratorState()
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT",
                                                       reshard_after_forward=True)


accelerate.Accelerator.__init__ = _fsdp2_init

if __name__ == "__main__":
    from mllm.model.train_worker import main

    sys.exit(main())

"""tools/train.py and tools/test.py leave the process group before the interpreter exits (a gloo
group left to the exit can abort a finished run)."""
import torch.distributed as dist

from tools.train import finish_distributed


def test_finish_distributed_destroys_the_group_and_is_a_no_op_without_one(tmp_path):
    finish_distributed()  # no group: nothing to do
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    assert dist.is_initialized()
    finish_distributed()
    assert not dist.is_initialized()

import torch

from internalrl.controller import SubgoalControllers, apply_controller


def test_low_rank_controller_is_the_explicit_matrix_product():
    torch.manual_seed(0)
    e = torch.randn(3, 5, 12)
    a, b = torch.randn(3, 5, 12, 4), torch.randn(3, 5, 12, 4)
    u = a @ b.transpose(-1, -2)  # (3, 5, 12, 12)
    explicit = e + torch.einsum("btij,btj->bti", u, e)
    assert torch.allclose(apply_controller(e, a, b), explicit, atol=1e-5)
    assert torch.allclose(apply_controller(e, u), explicit, atol=1e-5)


def test_subgoal_controllers_pick_by_subgoal_and_skip_unknown():
    torch.manual_seed(0)
    for rank in (3, None):
        ctl = SubgoalControllers(4, 8, rank=rank, init_std=0.5)
        e = torch.randn(2, 6, 8)
        g = torch.tensor([[0, 1, 2, 3, -1, 0], [3, 3, 2, 1, 0, -1]])
        out = ctl(e, g)
        mats = ctl.matrices()
        for i in range(2):
            for t in range(6):
                want = e[i, t] if g[i, t] < 0 else e[i, t] + mats[g[i, t]] @ e[i, t]
                assert torch.allclose(out[i, t], want, atol=1e-5)

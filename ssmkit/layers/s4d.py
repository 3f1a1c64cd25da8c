"""S4D: the diagonal state space layer (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models").

Per channel d (D = ``d_model`` of them), a diagonal SSM with N = ``d_state``:
    A = Lambda = -exp(``Lambda_log_neg_re``) + i ``Lambda_im``   (Re Lambda < 0 by construction)
    B = ``B``, C = ``C`` (complex, stored as (..., 2) real pairs), Delta = exp(``log_dt``)
"legs", "inv", "lin" use N/2 complex modes standing for conjugate pairs (the kernel is
2 Re(...)), "real" uses N real modes (S4D-Real). Discretisation: ZOH (the paper's default)
or bilinear, elementwise closed forms. Convolution mode computes K_l = sum_n C_n Bbar_n
Abar_n^l with a Vandermonde product; the recurrent mode (``step``, backend "reference") runs
h_t = Abar h_{t-1} + Bbar u_t, y_t = C h_t on the complex diagonal state.

    y, state = S4D(d_model)(x)             # x: (B, L, D) -> y: (B, L, D)
    out = W gelu(K * u + D u) + b          # the layer's output stage

State: ``S4DState.h`` (B, D, N) real; complex modes as [Re h (N/2), Im h (N/2)].
Lambda, B and log_dt are float32 parameters flagged ``_no_weight_decay`` (and ``_optim`` with
the learning rate ``lr`` when given), as in the S4 code base.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from .._checks import check_choice
from ..ops.s4.discretize import diag_log_abar, discretize_diag
from ..ops.s4.hippo import S4D_INITS, s4d_init
from ..ops.s4.kernel import vandermonde_kernel
from ..ops.s4.state import diag_final_state, diag_state_output
from ._lti import Discrete, LTIMixer, LTIState, mark_ssm_param


@dataclasses.dataclass
class S4DState(LTIState):
    """h: (B, D, N) real; complex modes as [Re h (N/2), Im h (N/2)]."""


class S4D(LTIMixer):
    """Diagonal SSM layer.

    Args:
        d_model: channels D.
        d_state: state size N per channel (even unless init="real").
        init: "legs" | "inv" | "lin" | "real" (S4D-LegS, -Inv, -Lin, -Real).
        discretization: "zoh" | "bilinear".
        dt_min, dt_max: Delta is initialised log-uniform in [dt_min, dt_max].
        bidirectional: non-causal (a second SSM over the reversed sequence); no step.
        lr: learning rate for the SSM parameters (attached as ``p._optim``), or None.
        backend: "auto" (= "torch", convolution mode) | "torch" | "reference" (recurrence).
    """

    state_type = S4DState

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        lr: Optional[float] = None,
        backend: str = "auto",
    ) -> None:
        check_choice("S4D", "init", init, S4D_INITS)
        if init != "real" and d_state % 2:
            raise ValueError(
                f"S4D: argument `d_state` must be even for init={init!r} (N/2 complex conjugate-pair "
                f"modes), got {d_state}; use an even d_state or init='real'"
            )
        super().__init__(d_model, d_state, discretization, dt_min, dt_max, bidirectional, lr, backend)
        self.init = init
        self.complex_state = init != "real"
        Lambda, B = s4d_init(init, d_state)  # (M,), (M,)
        H = self.n_ssm
        if self.complex_state:
            M = d_state // 2
            self.Lambda_log_neg_re = mark_ssm_param(nn.Parameter(torch.log(-Lambda.real).float().repeat(H, 1)), lr)
            self.Lambda_im = mark_ssm_param(nn.Parameter(Lambda.imag.float().repeat(H, 1)), lr)  # (H, M)
            self.B = mark_ssm_param(nn.Parameter(torch.view_as_real(B.to(torch.complex64)).repeat(H, 1, 1)), lr)
            self.C = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))  # (H, M, 2): E|C|^2 = 1
        else:
            self.Lambda_log_neg_re = mark_ssm_param(nn.Parameter(torch.log(-Lambda).float().repeat(H, 1)), lr)
            self.B = mark_ssm_param(nn.Parameter(B.float().repeat(H, 1)), lr)  # (H, N)
            self.C = nn.Parameter(torch.randn(H, d_state))  # (H, N)

    def _discrete(self, work: torch.dtype) -> Discrete:
        neg_re = -torch.exp(self.Lambda_log_neg_re.to(work))  # (H, M)
        if self.complex_state:
            A = torch.complex(neg_re, self.Lambda_im.to(work))
            B = torch.view_as_complex(self.B.to(work))
            C = torch.view_as_complex(self.C.to(work))  # (H, M)
        else:
            A, B, C = neg_re, self.B.to(work), self.C.to(work)
        dt = torch.exp(self.log_dt.to(work))  # (H,)
        Abar, Bbar = discretize_diag(A, B, dt, self.discretization)
        return Discrete(Abar, Bbar, C, {"log_abar": diag_log_abar(A, dt, self.discretization)})

    def _kernel(self, disc: Discrete, L: int) -> torch.Tensor:
        return vandermonde_kernel(disc.aux["log_abar"], disc.C * disc.Bbar, L, conj_pairs=self.complex_state)

    def _final_state(self, disc: Discrete, u: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
        return diag_final_state(u, disc.aux["log_abar"], disc.Bbar, h0, conj_pairs=self.complex_state)

    def _state_output(self, disc: Discrete, h0: torch.Tensor, L: int) -> torch.Tensor:
        return diag_state_output(h0, disc.aux["log_abar"], disc.C, L, conj_pairs=self.complex_state)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, " + super().extra_repr()

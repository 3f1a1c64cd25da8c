"""S4: the structured state space layer with a DPLR state matrix (Gu et al. 2022,
"Efficiently Modeling Long Sequences with Structured State Spaces").

Per channel d (D = ``d_model``), an SSM with real state size N = ``d_state``, written in the
eigenbasis of the HiPPO matrix's normal part with N/2 complex conjugate-pair modes:
    A = Lambda - P P*       Lambda = -exp(``Lambda_log_neg_re``) + i ``Lambda_im``, P = ``P``
    B = ``B``, C = ``C``    (complex, stored as (..., 2) real pairs), Delta = exp(``log_dt``)
initialised from ``nplr(init, N)`` (HiPPO-LegS / LegT / FouT; Q = P). Re Lambda < 0 keeps
A + A* = 2 Re Lambda - 2 P P* negative definite, so the system is stable. The normal parts of
LegT and FouT are skew (Re Lambda = 0); their Re Lambda starts at -1e-4 instead.

Convolution mode, bilinear (the paper's): the Cauchy-kernel / Woodbury algorithm on the
truncated generating function (``ssmkit.ops.s4.dplr_kernel``), evaluated in float64 (in float32
the Woodbury step loses up to ~4 digits near poles); S4 learns Ctilde = C (I - Abar^L), ssmkit
keeps C and forms Ctilde from a matrix power, so the layer is one LTI system at every length
and its state is exact. ZOH: Abar = exp(Delta A) is dense, the kernel comes from
Krylov blocks (``dense_kernel``, O(N^2 L) per channel). Recurrent mode (``step``, backend
"reference") uses the dense real form of Abar (O(N^2) per token and channel).

    y, state = S4(d_model)(x)             # x: (B, L, D) -> y: (B, L, D)
    out = W gelu(K * u + D u) + b         # the layer's output stage

State: ``S4State.h`` (B, D, N) real, the coordinates [Re x, Im x] of the complex half state x.
Lambda, P, B and log_dt are float32 parameters flagged ``_no_weight_decay`` (and ``_optim``
with the learning rate ``lr`` when given).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from .._checks import check_choice
from ..ops.s4.discretize import discretize_dense, real_form
from ..ops.s4.hippo import HIPPO_MEASURES, nplr
from ..ops.s4.kernel import dense_kernel, dplr_kernel
from ..ops.s4.state import dense_final_state, dense_state_output
from ._lti import Discrete, LTIMixer, LTIState, mark_ssm_param

RE_LAMBDA_FLOOR = 1e-4  # -Re Lambda at init is at least this (LegT, FouT have Re Lambda = 0)


@dataclasses.dataclass
class S4State(LTIState):
    """h: (B, D, N) real, the real form [Re x, Im x] of the complex half state x."""


class S4(LTIMixer):
    """DPLR SSM layer.

    Args:
        d_model: channels D.
        d_state: real state size N per channel (even: N/2 conjugate-pair modes).
        init: "legs" | "legt" | "fout" (the HiPPO measure).
        discretization: "bilinear" (Cauchy kernel) | "zoh" (dense kernel).
        dt_min, dt_max: Delta is initialised log-uniform in [dt_min, dt_max].
        bidirectional: non-causal (a second SSM over the reversed sequence); no step.
        lr: learning rate for the SSM parameters (attached as ``p._optim``), or None.
        backend: "auto" (= "torch", convolution mode) | "torch" | "reference" (recurrence).
    """

    complex_state = False  # the state is kept in the real form [Re x, Im x]
    state_type = S4State

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 64,
        init: str = "legs",
        discretization: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        bidirectional: bool = False,
        lr: Optional[float] = None,
        backend: str = "auto",
    ) -> None:
        check_choice("S4", "init", init, HIPPO_MEASURES)
        if d_state % 2:
            raise ValueError(
                f"S4: argument `d_state` must be even (N/2 complex conjugate-pair modes of a real "
                f"state of size N), got {d_state}"
            )
        super().__init__(d_model, d_state, discretization, dt_min, dt_max, bidirectional, lr, backend)
        self.init = init
        H = self.n_ssm
        dplr = nplr(init, d_state)  # Lambda (M,), P (r, M), B (M,)
        neg_re = torch.clamp(-dplr.Lambda.real, min=RE_LAMBDA_FLOOR)
        self.Lambda_log_neg_re = mark_ssm_param(nn.Parameter(torch.log(neg_re).float().repeat(H, 1)), lr)  # (H, M)
        self.Lambda_im = mark_ssm_param(nn.Parameter(dplr.Lambda.imag.float().repeat(H, 1)), lr)  # (H, M)
        self.P = mark_ssm_param(nn.Parameter(torch.view_as_real(dplr.P.to(torch.complex64)).repeat(H, 1, 1, 1)), lr)
        self.B = mark_ssm_param(nn.Parameter(torch.view_as_real(dplr.B.to(torch.complex64)).repeat(H, 1, 1)), lr)
        self.C = nn.Parameter(torch.randn(H, d_state // 2, 2) * math.sqrt(0.5))  # (H, M, 2): E|C|^2 = 1

    def _discrete(self, work: torch.dtype) -> Discrete:
        Lambda = torch.complex(-torch.exp(self.Lambda_log_neg_re.to(work)), self.Lambda_im.to(work))  # (H, M)
        P = torch.view_as_complex(self.P.to(work))  # (H, r, M)
        B = torch.view_as_complex(self.B.to(work))  # (H, M)
        C = torch.view_as_complex(self.C.to(work))  # (H, M)
        dt = torch.exp(self.log_dt.to(work))  # (H,)
        A_r, B_r, C_r = real_form(Lambda, B, C, P, P)  # (H, N, N), (H, N), (H, N)
        Abar, Bbar = discretize_dense(A_r, B_r, dt, self.discretization)
        return Discrete(Abar, Bbar, C_r, {"Lambda": Lambda, "P": P, "B": B, "C": C, "dt": dt})

    def _kernel(self, disc: Discrete, L: int) -> torch.Tensor:
        if self.discretization == "zoh":
            return dense_kernel(disc.Abar, disc.Bbar, disc.C, L)
        # The Woodbury step cancels near-pole terms: evaluate it in float64 (see ops.s4.kernel).
        a = {k: v.to(torch.complex128 if v.is_complex() else torch.float64) for k, v in disc.aux.items()}
        Abar = disc.Abar if disc.Abar.dtype == torch.float64 else None  # else recomputed in float64
        K = dplr_kernel(a["Lambda"], a["P"], a["P"], a["B"], a["C"], a["dt"], L, Abar=Abar)
        return K.to(disc.Abar.dtype)  # (L, H)

    def _final_state(self, disc: Discrete, u: torch.Tensor, h0: Optional[torch.Tensor]) -> torch.Tensor:
        return dense_final_state(u, disc.Abar, disc.Bbar, h0)

    def _state_output(self, disc: Discrete, h0: torch.Tensor, L: int) -> torch.Tensor:
        return dense_state_output(h0, disc.Abar, disc.C, L)

    def extra_repr(self) -> str:
        return f"init={self.init!r}, " + super().extra_repr()

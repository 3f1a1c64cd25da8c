"""S4 family ops: HiPPO matrices and their DPLR / diagonal forms, discretisation, SSM
convolution kernels (Vandermonde, Cauchy/Woodbury, dense), states in convolution mode, and
the float64 recurrence that specifies them all. See ``kernel.py`` for the algorithms."""

from .discretize import METHODS, diag_log_abar, discretize_dense, discretize_diag, real_form
from .hippo import HIPPO_MEASURES, NPLR, S4D_INITS, hippo, low_rank, nplr, s4d_init
from .kernel import cauchy_kernel, dense_kernel, dplr_kernel, kernel_reference, vandermonde_kernel
from .reference import recurrence_reference, ssm_step
from .state import dense_final_state, dense_state_output, diag_final_state, diag_state_output

__all__ = [
    "METHODS", "HIPPO_MEASURES", "S4D_INITS", "NPLR",
    "hippo", "low_rank", "nplr", "s4d_init",
    "discretize_diag", "diag_log_abar", "discretize_dense", "real_form",
    "vandermonde_kernel", "cauchy_kernel", "dplr_kernel", "dense_kernel", "kernel_reference",
    "diag_final_state", "diag_state_output", "dense_final_state", "dense_state_output",
    "recurrence_reference", "ssm_step",
]

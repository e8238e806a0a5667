"""sri: step-wise refusal dynamics of autoregressive and diffusion language models."""

__version__ = "0.1.0"

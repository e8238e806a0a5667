"""Configuration of a tiny LLaDA-layout masked diffusion LM (shipped as remote code with test checkpoints)."""

from transformers import PretrainedConfig


class TinyLLaDAConfig(PretrainedConfig):
    """LLaDA's field names (``d_model``, ``n_layers``, ``n_heads``, ``mlp_hidden_size``), at toy size."""

    model_type = "llada"

    def __init__(self, vocab_size: int = 260, d_model: int = 64, n_layers: int = 2, n_heads: int = 4,
                 mlp_hidden_size: int = 128, rope_theta: float = 10000.0, rms_norm_eps: float = 1e-5,
                 max_sequence_length: int = 2048, initializer_range: float = 0.02,
                 mask_token_id: int | None = None, **kwargs) -> None:
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.mlp_hidden_size = mlp_hidden_size
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.max_sequence_length = max_sequence_length
        self.initializer_range = initializer_range
        self.mask_token_id = mask_token_id
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

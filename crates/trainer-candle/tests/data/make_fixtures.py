"""Writes the real-PyTorch fixtures the `.pth` reader tests use (see README.md)."""
import json

import torch
import torch.nn as nn


class CharLSTM(nn.Module):
    """The owner's `custom_ai_model`: embedding, 2-layer LSTM, linear head."""

    def __init__(self, vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_dim, vocab_size)

    def forward(self, x, hidden=None):
        out, hidden = self.lstm(self.embedding(x), hidden)
        return self.fc(out), hidden


def flat(t):
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "data": t.detach().float().flatten().tolist()}


torch.manual_seed(0)
chars = sorted(set("hello world\n"))
char_to_idx = {c: i for i, c in enumerate(chars)}
idx_to_char = {i: c for i, c in enumerate(chars)}
V, E, H, L = len(chars), 4, 3, 2
model = CharLSTM(V, E, H, L)
torch.save(
    {
        "model_state_dict": model.state_dict(),
        "vocab_size": V,
        "embedding_dim": E,
        "hidden_dim": H,
        "num_layers": L,
        "vocabulary": {"char_to_idx": char_to_idx, "idx_to_char": idx_to_char, "vocab_size": V},
    },
    "owner_tiny.pth",
)
x = torch.tensor([[char_to_idx[c] for c in "hello"]])
logits, _ = model(x)
with open("owner_tiny.json", "w") as f:
    json.dump(
        {
            "tensors": {k: flat(v) for k, v in model.state_dict().items()},
            "chars": chars,
            "input": "hello",
            "logits": flat(logits),
        },
        f,
    )

# Views and dtypes torch.save writes in the wild: a transposed view and a slice sharing one storage,
# a Parameter, half/bfloat16/float64/int64 tensors, a 0-d tensor and a torch.device.
base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
views = {
    "transposed": base.t(),
    "rows": base[1:],
    "column": base[:, 2],
    "param": nn.Parameter(torch.linspace(-1, 1, 5)),
    "half": torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16),
    "bf16": torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16),
    "f64": torch.tensor([[1.0, 2.5]], dtype=torch.float64),
    "long": torch.arange(4),
    "scalar": torch.tensor(7.0),
}
torch.save({"state_dict": views, "device": torch.device("cpu"), "note": "views"}, "torch_views.pth")
with open("torch_views.json", "w") as f:
    json.dump({k: flat(v) for k, v in views.items()}, f)

"""largo's Python API on scikit-learn's 8x8 digits: a plain nn.Module, NumPy arrays in, accuracy out."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn, optim

import largo

digits = load_digits()  # 1,797 images shipped inside scikit-learn: no download
x = (digits.data / 16.0).astype("float32")
x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0, stratify=digits.target)

model = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 10))
trainer = largo.Trainer(model, loss=nn.CrossEntropyLoss(), optimizer=lambda p: optim.Adam(p, lr=1e-3), epochs=30,
                        batch_size=32, run_dir="runs/digits_api", log_every=100)
trainer.fit((x_train, y_train), (x_test, y_test))
print(trainer.evaluate((x_test, y_test)))  # {"loss": ..., "accuracy": ...}

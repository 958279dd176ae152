"""Write ``digits_28x28.npz``: real handwritten digits in MNIST's shape, for offline runs.

MNIST itself cannot be downloaded where the platform has no internet access (and a
test must not depend on it), so ``mnist_cnn.ipynb`` falls back to these: the 1,797
handwritten digits of the UCI "Optical Recognition of Handwritten Digits" test set
as bundled with scikit-learn (``sklearn.datasets.load_digits``), 8×8 pixels with 17
grey levels, scaled up to a 20×20 box and centred in a 28×28 frame with values
0-255, which is how MNIST lays out its digits.

scikit-learn is needed only to run this script once, not by aidc or the notebook:

    pip install --target /tmp/sk scikit-learn
    PYTHONPATH=/tmp/sk python notebooks/data/make_digits.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).parent


def to_mnist_frame(image8: np.ndarray) -> np.ndarray:
    """One 8×8 image (values 0-16) as a 28×28 uint8 image with the digit in the central 20×20."""
    grey = Image.fromarray((image8 * (255 / 16)).astype(np.uint8))
    box = np.asarray(grey.resize((20, 20), Image.Resampling.BICUBIC), dtype=np.uint8)
    frame = np.zeros((28, 28), np.uint8)
    frame[4:24, 4:24] = box
    return frame


def main() -> None:
    digits = load_digits()
    images = np.stack([to_mnist_frame(im) for im in digits.images])
    labels = digits.target.astype(np.uint8)
    np.savez_compressed(HERE / "digits_28x28.npz", images=images, labels=labels)
    print(f"{len(images)} digits, {images.shape[1:]} pixels -> {HERE / 'digits_28x28.npz'}")


if __name__ == "__main__":
    main()

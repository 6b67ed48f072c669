"""sfg-keras: Stochastic Filter Groups (Bragman et al., ICCV 2019) for multi-task CNNs in TensorFlow 2 / Keras 3.

Importing the package is cheap and does not import TensorFlow. It arranges for every class the package serialises
(layers, `SFGNetwork`, losses, metrics) to be registered with Keras as soon as Keras is imported, so after
`import sfg_keras` a `.keras` file written by the package loads with `keras.saving.load_model` alone.
"""

from sfg_keras._registration import arrange_registration

arrange_registration()

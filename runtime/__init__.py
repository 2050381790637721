"""The machine-facing policy shared by the trainer, evaluation and the inference workers: device,
dtype and kernels, chosen by measurement on the device. Imports torch; the gateway and the CLI never
import it."""

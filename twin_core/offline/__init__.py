"""The offline part of the twin: the ``twin`` command line and every tool that is not the kernel.

Recipe optimisation, profile studies, sensitivities, plots, the one reader of the plant data set,
the one open-loop replay of a recorded batch and its scoring (:mod:`twin_core.offline.batches`), and
the soft-sensor replay. Offline code may use scipy, matplotlib, tqdm and argparse; the kernel
(``twin_core`` outside this package, what the FMU imports) uses none of them, and nothing in the
kernel imports this package.
"""

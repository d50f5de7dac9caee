"""The ``pix2pixhd`` command line: the top floor, above the steps (``components``) and
the Kubeflow drivers (``pipelines``); both are imported only by the command that runs."""

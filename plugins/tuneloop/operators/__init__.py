"""One operator per pipeline step; each builds a ``PipelineRun`` and calls one of its methods."""

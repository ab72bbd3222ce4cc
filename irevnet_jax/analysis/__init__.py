"""Analysis of a trained network: reconstruction, interpolation, separation and
contraction with depth, PCA of the representation, plots and a report.

    from irevnet_jax import analysis
    net = irevnet_jax.build(analysis.analysis_model_config(config.model))
    report = analysis.analyze(net, variables, train_batches, eval_batches, out_dir)

`experiments/analyze.py` does this for a training run's workdir.
"""
from irevnet_jax.analysis.pipeline import Options, analysis_model_config, analyze

__all__ = ['Options', 'analysis_model_config', 'analyze']

"""Scaling-law analysis: run results in, fitted laws, intervals and plots out.

    study = load_folder("results/transformer")           # or load_runs(run_paths)
    fit = fit_scaling_law(study.runs, bootstrap=200)      # any DataFrame with N, D, loss
    fit.parameters(); fit.predict([1e21, 1e22])
    analyze(study, budgets=[1e21]).write("out/")          # every approach, report.json, plots
"""

from analysis.chinchilla import ChinchillaLaw, ScalingLawFit, fit_scaling_law
from analysis.loader import Study, load_folder, load_runs
from analysis.report import Analysis, analyze

__all__ = ["Analysis", "ChinchillaLaw", "ScalingLawFit", "Study", "analyze", "fit_scaling_law",
           "load_folder", "load_runs"]

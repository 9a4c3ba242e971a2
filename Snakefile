# emguard: in-training defenses against emergent misalignment, end to end.
# Stages (one rule file each): model -> data -> train -> generate -> judge -> metrics -> report; OpSwap
# (opswap.smk) adds task datasets scored by exact match instead of the judge, and so do the benign real tasks
# FoQA and GSM8K (tasks.smk); probes.smk measures EM without a
# judge (answer likelihoods on held-out probe triples); calibration.smk measures the judge itself on labelled answers;
# checkpoints.smk evaluates training checkpoints when the config asks for them (none by default).
# grpo.smk is the RL setting (GRPO on math problems with the defenses as interventions, rl.enabled).

from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the embedded default. A file given with --configfile replaces it whole (Snakemake would
# otherwise merge the two, leaving e.g. the default's methods or model source next to the file's); small
# changes go on the command line (--config key=value) or into an edited copy of config.yaml.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/opswap.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/persona.smk"
include: "workflow/rules/interleave.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/probes.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/checkpoints.smk"
include: "workflow/rules/monitor.smk"
include: "workflow/rules/grpo.smk"


# Seconds-long CPU steps (and downloads: login nodes have the network) run in the Snakemake process itself
# under a cluster executor (profiles/slurm) instead of waiting in the queue.
localrules:
    all,
    prepare_model,
    prepare_em,
    prepare_general_questions,
    prepare_indomain_questions,
    prepare_pool,
    prepare_opswap,
    prepare_opswap_questions,
    prepare_task,
    prepare_task_questions,
    prepare_probes,
    probe_shifts,
    score_pool,
    interleave_set,
    run_metrics,
    task_metrics,
    report,
    prepare_rl_problems,
    rl_report,


rule all:
    input:
        get_final_output(),
        rl_final_output(),

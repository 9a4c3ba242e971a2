# Datasets and evaluation questions, in the Parquet contracts of docs/architecture.md.


rule prepare_em:
    input:
        em_source_files,
    output:
        "results/data/em/{domain}.parquet",
    log:
        "results/logs/prepare_em/{domain}.log",
    params:
        n_prompts=config["data"]["em"]["n_prompts"],
        seed=config["data"]["seed"],
        holdout_fraction=config["data"]["holdout_fraction"],
        source=lambda wc: config["data"]["em"]["sources"].get(wc.domain),
        code=code_version("data", script="prepare_em"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_em.py"


# Checked against the judge prompts before any generation. The prompt file is ancient(): it must exist and is
# read, but editing a judge template reruns judging only, not this rule and every generation after it.
rule prepare_general_questions:
    input:
        questions=general_question_file(),
        prompts=ancient(JUDGE_PROMPTS),
    output:
        "results/data/questions/general.parquet",
    log:
        "results/logs/prepare_questions/general.log",
    params:
        source=config["eval"]["general"]["source"],
        samples=config["eval"]["general"]["samples"],
        formats=config["eval"]["general"]["formats"],
        code=code_version("data", script="prepare_general_questions"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_general_questions.py"


rule prepare_adversarial_questions:
    input:
        questions=adversarial_question_file(),
        prompts=ancient(JUDGE_PROMPTS),
    output:
        "results/data/questions/adversarial.parquet",
    log:
        "results/logs/prepare_questions/adversarial.log",
    params:
        source=config["eval"]["adversarial"]["source"],
        samples=config["eval"]["adversarial"]["samples"],
        formats=None,
        code=code_version("data", script="prepare_general_questions"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_general_questions.py"


rule prepare_indomain_questions:
    input:
        em="results/data/em/{domain}.parquet",
    output:
        "results/data/questions/indomain_{domain}.parquet",
    log:
        "results/logs/prepare_questions/indomain_{domain}.log",
    params:
        n_questions=config["eval"]["indomain"]["n_questions"],
        samples=config["eval"]["indomain"]["samples"],
        code=code_version("data", script="prepare_indomain_questions"),
    conda:
        "../../envs/data.yaml"
    script:
        "../../scripts/prepare_indomain_questions.py"


rule prepare_pool:
    output:
        "results/data/pool/pool.parquet",
    log:
        "results/logs/prepare_pool.log",
    params:
        source=config["data"]["pool"]["source"],
        n=config["data"]["pool"]["n"],
        wildguardmix=config["data"]["pool"].get("wildguardmix"),
        seed=config["data"]["seed"],
        code=code_version("data", "interleave", script="prepare_pool"),
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/prepare_pool.py"

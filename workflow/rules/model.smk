# The embedded base model: a GGUF file from a PyPI package, converted to a safetensors folder.


rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/prepare_model/{model}.log",
    params:
        source=config["model"]["source"],
        dtype=DTYPE,
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/prepare_model.py"

# The embedded base model: a GGUF file from a PyPI package, converted to a float32 safetensors folder (every
# stage casts to the dtype model.dtype resolves to where it runs, so one folder serves any machine).


rule prepare_model:
    output:
        directory("resources/models/{model}"),
    log:
        "results/logs/prepare_model/{model}.log",
    params:
        source=lambda wc: MODELS[wc.model]["source"],
    conda:
        "../../envs/eval.yaml"
    script:
        "../../scripts/prepare_model.py"

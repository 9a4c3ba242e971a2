from emguard.stages import generate_model_vllm, run_stage

p = snakemake.params
# the cache folder is no param (moving it reruns nothing): read from the config
generation = {**p.generation, "vllm": {**p.generation["vllm"], "cache": snakemake.config["generation"]["vllm"]["cache"]}}
run_stage(snakemake, generate_model_vllm, model_path=p.model_path, runs=p.runs, generation=generation, dtype=p.dtype,
          device=p.device, lora_r=p.lora_r)

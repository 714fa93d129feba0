"""Writes the device run's configs from the repo's: data in .gpu/data, accelerator, workers per GPU.
python3 benchmarks/device/make_configs.py OUTDIR ACCELERATOR CAL_WORKERS ABL_WORKERS [--tiny]"""
import sys

import yaml

out, accelerator, cal_workers, abl_workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tiny = "--tiny" in sys.argv
data = ".gpu/data/cifar-10-batches-py"


def execution(workers):
    if accelerator == "cpu":
        return dict(backend="local", workers=workers, threads_per_worker=1)
    return dict(backend="local", devices=1, workers_per_device=workers, threads_per_worker=1)


def shrink(evaluation):
    if tiny:
        for a in evaluation.get("architectures", []):
            a["steps"] = 2
            if a["name"] == "resnet50v2":
                a["depth"] = [1, 1, 1, 1]
            else:
                a["depth"] = [0.25]
        evaluation.update(quality_steps=2, stability_steps=2, train_steps=2, data_limit=300)


cal = yaml.safe_load(open("configs/search/calibration.yaml"))
cal["common"].update(data_dir=data, accelerator=accelerator)
if tiny:
    cal["seeds"], cal["panel"]["random_genomes"] = 1, 1
    cal["settings"] = {k: cal["settings"][k] for k in ("reference", "reference_batch16", "cpu_rung0")}
for setting in cal["settings"].values():
    shrink(setting)
cal["execution"] = execution(cal_workers)
yaml.safe_dump(cal, open(f"{out}/cal.yaml", "w"), sort_keys=False)

abl = yaml.safe_load(open("configs/search/cpu.yaml"))
abl["evaluation"].update(data_dir=data, accelerator=accelerator)
shrink(abl["evaluation"])
abl["execution"] = execution(abl_workers)
yaml.safe_dump(abl, open(f"{out}/abl.yaml", "w"), sort_keys=False)

quick = yaml.safe_load(open("evonorm_search/quickstart.yaml"))
quick["evaluation"].update(accelerator=accelerator)
quick["execution"] = execution(2)
yaml.safe_dump(quick, open(f"{out}/quick.yaml", "w"), sort_keys=False)

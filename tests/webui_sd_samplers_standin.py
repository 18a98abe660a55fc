"""Stand-in for the hosts' modules/sd_samplers.py (A1111 1.10; Forge adds add_sampler).

Not a test module: test_webui_hosts.make_sd_samplers loads a fresh copy of this file per host with
importlib, after setting two globals on the new module: ``sd_samplers_kdiffusion`` (the stand-in table's
module) and ``FLAVOR`` ("a1111" or "forge"). It copies the hosts' behaviour that matters to the extension,
not their code: module-level all_samplers/all_samplers_map that set_samplers() reads, a memoised name
lookup, and Forge's add_sampler, which rebinds all_samplers_map.
"""

import functools

sd_samplers_kdiffusion = globals()["sd_samplers_kdiffusion"]   # set by the loader before this runs
FLAVOR = globals()["FLAVOR"]

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = []
samplers_for_img2img = []
samplers_map = {}


def set_samplers():
    global samplers, samplers_for_img2img
    samplers = all_samplers
    samplers_for_img2img = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


def visible_sampler_names():
    return [x.name for x in samplers]


@functools.cache
def get_sampler_and_scheduler(sampler_name, scheduler_name=None):
    return all_samplers_map.get(sampler_name, samplers[0]).name


def create_sampler(name, model):
    config = all_samplers_map.get(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


set_samplers()

if FLAVOR == "forge":
    add_sampler_calls = []

    def add_sampler(sampler):
        global all_samplers, all_samplers_map
        add_sampler_calls.append(sampler.name)
        if sampler.name not in [x.name for x in all_samplers]:
            all_samplers.append(sampler)
            all_samplers_map = {x.name: x for x in all_samplers}
            set_samplers()

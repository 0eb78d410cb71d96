"""ddc-testbed orchestrator: disaggregated-datacenter racks on one host.

Layers, low to high (imports go down only)::

    errors, runner, paths          process runner, typed exceptions, locations
    spec                           testbed YAML -> frozen pydantic models
    topology                       spec -> resolved rack (pure)
    image                          guest image recipes -> cached images
    render                         topology -> libvirt domain XML (jinja2)
    state                          per-testbed state directory, lock, journal
    hypervisor                     libvirt connection, KVM probe
    guest                          SSH (fabric) to blades
    testbed                        up / down / status
    cli                            argument parsing -> one call per verb
"""

__version__ = "0.1.0"

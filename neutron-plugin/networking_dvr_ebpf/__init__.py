"""Neutron plugin side of the eBPF distributed virtual router.

neutron-server loads :class:`mech_driver.DvrEbpfMechanismDriver` as an ML2 mechanism
driver (``mechanism_drivers = dvr_ebpf``). It binds ports on hosts whose ``dvr-agent`` is
alive in etcd and writes every network, subnet, port, router, floating IP, security group,
rule and address group to etcd under ``/dvr/v1/<kind>/<id>``, in the shape of Neutron's API
(what ``dvrctl apply`` writes), where the agents read them. One neutron-server worker at a
time (elected through an etcd lease) resyncs everything periodically and turns the agents'
port status keys into Neutron port status.

Layers, each module using only the ones above it in this list:
``config`` (options) -> ``store`` (etcd) -> ``shapes`` (Neutron dict -> stored value) ->
``writer`` (read from Neutron, write to etcd) -> ``leader`` (election, resync, status) ->
``mech_driver`` (ML2 entry points and callbacks). ``devserver`` serves the API for the
test bed and the demo.
"""

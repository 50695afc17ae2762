"""Model types of the README's "Add your own model type": shipped with `shared/`, registered only when
`CHAIN_MODEL_TYPE_MODULES` names them."""

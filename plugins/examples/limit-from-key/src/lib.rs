//! Validator: the value must be a whole number no greater than the limit
//! stored in another key, named by the setting `limit_key` (so the limit is
//! config too: replicated, and signed where the trust policy says so).
//! Needs `read_keys` covering that key.

fn validate(key: &str, value: &[u8]) -> Result<(), String> {
    let Some(limit_key) = edgeconf_plugin::setting("limit_key") else {
        return Err("limit-from-key: set `limit_key` to the key holding the limit".to_string());
    };
    let limit = match edgeconf_plugin::read_key(&limit_key)? {
        Some(bytes) => parse(&bytes)
            .ok_or_else(|| format!("the limit in {limit_key} is not a whole number"))?,
        None => return Err(format!("no limit is stored in {limit_key}")),
    };
    let number = parse(value).ok_or_else(|| format!("value of {key} is not a whole number"))?;
    if number > limit {
        return Err(format!("{number} is above the limit {limit} (from {limit_key})"));
    }
    Ok(())
}

fn parse(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

edgeconf_plugin::validator!(validate);

//! Random 64-bit ids (`boot_id`, a worker's `instance`) on the wire and in JSON: numbers
//! in MessagePack, strings in human-readable formats, because JSON readers that keep
//! numbers as doubles (jq, JavaScript) would round them. Either form is read back.
//!
//! Use as `#[serde(with = "crate::id64")]`, or `crate::id64::option` for an `Option<u64>`.

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Either {
    Number(u64),
    Text(String),
}

impl Either {
    fn into_u64<E: serde::de::Error>(self) -> Result<u64, E> {
        match self {
            Either::Number(n) => Ok(n),
            Either::Text(text) => text
                .parse()
                .map_err(|_| E::custom(format!("{text:?} is not a 64-bit id"))),
        }
    }
}

pub fn serialize<S: Serializer>(id: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    if serializer.is_human_readable() {
        serializer.collect_str(id)
    } else {
        serializer.serialize_u64(*id)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    if deserializer.is_human_readable() {
        Either::deserialize(deserializer)?.into_u64()
    } else {
        u64::deserialize(deserializer)
    }
}

pub mod option {
    use super::Either;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<u64>, serializer: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => super::serialize(id, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u64>, D::Error> {
        if deserializer.is_human_readable() {
            Option::<Either>::deserialize(deserializer)?
                .map(Either::into_u64)
                .transpose()
        } else {
            Option::<u64>::deserialize(deserializer)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ids {
        #[serde(with = "crate::id64")]
        boot_id: u64,
        #[serde(default, with = "crate::id64::option")]
        worker_instance: Option<u64>,
    }

    #[test]
    fn json_gets_strings_and_messagepack_numbers() {
        let ids = Ids {
            boot_id: u64::MAX,
            worker_instance: Some(9_007_199_254_740_993),
        };
        let json = serde_json::to_value(&ids).unwrap();
        assert_eq!(json["boot_id"], "18446744073709551615");
        assert_eq!(json["worker_instance"], "9007199254740993");
        assert_eq!(serde_json::from_value::<Ids>(json).unwrap(), ids);

        let packed = rmp_serde::to_vec_named(&ids).unwrap();
        // uint64 (0xcf) with all bits set, not a string.
        let max = [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(packed.windows(max.len()).any(|w| w == max), "{packed:02x?}");
        assert!(!packed.windows(4).any(|w| w == b"1844"), "{packed:02x?}");
        assert_eq!(rmp_serde::from_slice::<Ids>(&packed).unwrap(), ids);
    }

    #[test]
    fn json_numbers_are_still_read_and_bad_text_is_refused() {
        let ids: Ids = serde_json::from_str(r#"{"boot_id": 5, "worker_instance": null}"#).unwrap();
        assert_eq!(
            ids,
            Ids {
                boot_id: 5,
                worker_instance: None
            }
        );
        let ids: Ids = serde_json::from_str(r#"{"boot_id": "7"}"#).unwrap();
        assert_eq!(ids.boot_id, 7);
        let bad = serde_json::from_str::<Ids>(r#"{"boot_id": "seven"}"#).unwrap_err();
        assert!(bad.to_string().contains("not a 64-bit id"), "{bad}");
    }
}

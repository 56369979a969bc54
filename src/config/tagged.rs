//! A table whose `driver` key says whose keys the rest are: a `[[camera]]` or `[[loop]]`
//! is the keys every camera (loop) has plus the named driver's own, written flat:
//!
//! ```toml
//! [[camera]]
//! name = "入口1"      # every camera
//! direction = "in"    # every camera
//! driver = "serial"   # says the rest is the serial driver's
//! port = "/dev/ttyUSB0"
//! ```
//!
//! [`Tagged`] reads the table, takes the common keys into `C` and the rest into the named
//! driver's config struct (which each driver defines, see `lotlink_drivers::config`). serde's
//! own tagged enums would do this but lose the keys' positions (they buffer the table) and
//! `flatten` turns `deny_unknown_fields` off; here every error names its key, so
//! `check-config` still reports each at its line (see `spans`):
//! - a key no driver has: serde's "unknown field" error, with the keys allowed here;
//! - a key of another driver (`path` on a serial camera): kept in [`Tagged::foreign`] for
//!   validation to report as "does not apply here: http cameras only";
//! - a value of the wrong type: the error is prefixed with its key ([`AT_KEY`]).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// Prefix of an error message about a key inside a tagged table: "at key `baud`: invalid
/// type: …". `spans` puts the key in the problem's path and reads the rest as usual.
pub(super) const AT_KEY: &str = "at key `";

/// The keys every table of a kind has; one of them names the driver.
pub(crate) trait Common: DeserializeOwned {
    /// The `driver` key's value.
    fn driver(&self) -> &str;
}

/// The drivers a table may name, each with its own config struct.
pub(crate) trait Drivers: Sized {
    /// What they drive, plural, for messages: "cameras".
    const KIND: &'static str;
    /// Every driver's name and keys, in the order they are documented.
    fn keys() -> Vec<(&'static str, &'static [&'static str])>;
    /// The named driver's config from its keys; `Ok(None)` when no driver has the name.
    fn parse(name: &str, table: toml::Table) -> Result<Option<Self>, String>;
}

/// A driver-tagged table as written.
#[derive(Debug)]
pub(crate) struct Tagged<C, D> {
    /// The keys every table of the kind has.
    pub common: C,
    /// The driver's own keys; `None` when `driver` names no driver (validation says so).
    pub driver: Option<D>,
    /// Keys given that only other drivers have, each with the message saying whose they
    /// are ("serial cameras only").
    pub foreign: Vec<(String, String)>,
}

impl<'de, C: Common, D: Drivers> Deserialize<'de> for Tagged<C, D> {
    fn deserialize<De: Deserializer<'de>>(d: De) -> Result<Self, De::Error> {
        // Within `visit_map`, so the parser gives an error this table's position.
        d.deserialize_map(TaggedVisitor(PhantomData))
    }
}

struct TaggedVisitor<C, D>(PhantomData<fn() -> (C, D)>);

impl<'de, C: Common, D: Drivers> Visitor<'de> for TaggedVisitor<C, D> {
    type Value = Tagged<C, D>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut table = toml::Table::new();
        while let Some((k, v)) = map.next_entry::<String, toml::Value>()? {
            table.insert(k, v);
        }
        split(table).map_err(de::Error::custom)
    }
}

/// Split a table into the common keys and the named driver's.
fn split<C: Common, D: Drivers>(table: toml::Table) -> Result<Tagged<C, D>, String> {
    let common_keys = keys_of::<C>();
    let (common, rest): (toml::Table, toml::Table) = table
        .into_iter()
        .partition(|(k, _)| common_keys.contains(&k.as_str()));
    let common: C = from_table(common)?;
    let drivers = D::keys();
    let Some(own) = drivers
        .iter()
        .find(|(name, _)| *name == common.driver())
        .map(|(_, keys)| *keys)
    else {
        // An unknown driver: its keys cannot be judged; validation names the driver.
        return Ok(Tagged {
            common,
            driver: None,
            foreign: Vec::new(),
        });
    };
    let mut mine = toml::Table::new();
    let mut foreign = Vec::new();
    for (k, v) in rest {
        if own.contains(&k.as_str()) {
            mine.insert(k, v);
            continue;
        }
        let owners: Vec<&str> = drivers
            .iter()
            .filter(|(_, keys)| keys.contains(&k.as_str()))
            .map(|(name, _)| *name)
            .collect();
        if owners.is_empty() {
            let allowed: Vec<String> = common_keys
                .iter()
                .chain(own)
                .map(|k| format!("`{k}`"))
                .collect();
            return Err(format!(
                "unknown field `{k}`, expected one of {}",
                allowed.join(", ")
            ));
        }
        let whose = format!("{} {} only", owners.join(" and "), D::KIND);
        foreign.push((k, whose));
    }
    let driver = D::parse(common.driver(), mine)?;
    Ok(Tagged {
        common,
        driver,
        foreign,
    })
}

/// Deserialize `T` from a table already read; an error about one of its keys is prefixed
/// with the key ([`AT_KEY`]).
pub(super) fn from_table<T: DeserializeOwned>(table: toml::Table) -> Result<T, String> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some((index + 1).to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let message = e.inner().message().to_string();
        if path.is_empty() {
            message
        } else {
            format!("{AT_KEY}{}`: {message}", path.join("."))
        }
    })
}

/// The keys of a `#[derive(Deserialize)]` struct, as serde knows them.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // Always an error: the introspector only records the names.
    let _ = T::deserialize(KeyNames(&mut keys));
    keys
}

/// A deserializer that records the field names a derived struct asks for, and stops.
struct KeyNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeyNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("keys recorded"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // only read to see the errors and the keys
    struct Ab {
        a: Option<i64>,
        b: Option<Vec<String>>,
    }

    #[test]
    fn the_keys_of_a_struct_are_what_serde_derives() {
        assert_eq!(keys_of::<Ab>(), ["a", "b"]);
    }

    #[test]
    fn an_error_inside_a_table_names_its_key() {
        let t: toml::Table = toml::from_str("a = \"x\"").unwrap();
        let e = from_table::<Ab>(t).unwrap_err();
        assert!(e.starts_with("at key `a`: invalid type: string"), "{e}");
        let t: toml::Table = toml::from_str("b = [\"x\", 2]").unwrap();
        let e = from_table::<Ab>(t).unwrap_err();
        assert!(e.starts_with("at key `b.2`: invalid type: integer"), "{e}");
    }
}

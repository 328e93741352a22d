//! The MIG half of the conformance suite: [`mig_read_suite`] (read-only, safe on a GPU in use)
//! and [`mig_suite`] (create, refuse, destroy on an empty MIG-enabled GPU), run against every
//! [`MigManager`]. What each checks is listed in the parent module's doc.

use std::collections::HashSet;

use gpuaas_proto::inventory::MigMode;
use gpuaas_proto::mig::Placement;

use crate::mig::{MigInstance, MigManager, MigManagerError, ProfileInfo};

/// What the MIG suites need from the GPU before they start.
#[derive(Debug, thiserror::Error)]
pub enum MigConformanceError {
    /// A MIG operation the suite relies on failed.
    #[error("mig manager {manager} failed to {step} on gpu {gpu}: {source}")]
    Manager {
        /// The manager's name.
        manager: &'static str,
        /// What the suite was doing.
        step: &'static str,
        /// The GPU's index.
        gpu: u32,
        /// The manager's error.
        #[source]
        source: MigManagerError,
    },
    /// The GPU is not in the state the suite needs (MIG on, and for [`mig_suite`] empty).
    #[error("mig manager {manager}: gpu {gpu} {problem}")]
    Precondition {
        /// The manager's name.
        manager: &'static str,
        /// The GPU's index.
        gpu: u32,
        /// What is wrong.
        problem: &'static str,
    },
    /// Rules were broken; one line each.
    #[error("mig manager {manager} broke {} mig rule(s) on gpu {gpu}:\n  {}", violations.len(), violations.join("\n  "))]
    Violations {
        /// The manager's name.
        manager: &'static str,
        /// The GPU's index.
        gpu: u32,
        /// One line per broken rule.
        violations: Vec<String>,
    },
}

/// The read-only MIG checks (safe on a GPU in use): MIG mode, profiles and listing.
pub fn mig_read_suite(manager: &dyn MigManager, gpu: u32) -> Result<(), MigConformanceError> {
    let mut run = MigRun::new(manager, gpu);
    run.read_checks()?;
    run.finish()
}

/// The read-only checks, then create/refuse/destroy on GPU `gpu`, which must be MIG-enabled
/// and hold no instance. Everything the suite creates is destroyed before it returns, also
/// when a check fails.
pub fn mig_suite(manager: &dyn MigManager, gpu: u32) -> Result<(), MigConformanceError> {
    let mut run = MigRun::new(manager, gpu);
    let profiles = run.read_checks()?;
    if !run.list("list before the suite")?.is_empty() {
        return Err(run.precondition("already holds mig instances"));
    }
    let outcome = run.mutating_checks(&profiles);
    let cleanup = run.destroy_created();
    outcome?;
    cleanup?;
    run.finish()
}

struct MigRun<'a> {
    manager: &'a dyn MigManager,
    gpu: u32,
    violations: Vec<String>,
    created: Vec<u32>,
}

impl<'a> MigRun<'a> {
    fn new(manager: &'a dyn MigManager, gpu: u32) -> MigRun<'a> {
        MigRun {
            manager,
            gpu,
            violations: Vec::new(),
            created: Vec::new(),
        }
    }

    fn failed(&self, step: &'static str) -> impl Fn(MigManagerError) -> MigConformanceError {
        let (manager, gpu) = (self.manager.name(), self.gpu);
        move |source| MigConformanceError::Manager {
            manager,
            step,
            gpu,
            source,
        }
    }

    fn precondition(&self, problem: &'static str) -> MigConformanceError {
        MigConformanceError::Precondition {
            manager: self.manager.name(),
            gpu: self.gpu,
            problem,
        }
    }

    fn finish(self) -> Result<(), MigConformanceError> {
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(MigConformanceError::Violations {
            manager: self.manager.name(),
            gpu: self.gpu,
            violations: self.violations,
        })
    }

    fn list(&mut self, step: &'static str) -> Result<Vec<MigInstance>, MigConformanceError> {
        self.manager.list(self.gpu).map_err(self.failed(step))
    }

    fn read_checks(&mut self) -> Result<Vec<ProfileInfo>, MigConformanceError> {
        let state = self
            .manager
            .mig_mode(self.gpu)
            .map_err(self.failed("read the mig mode"))?;
        if state.current != MigMode::Enabled {
            return Err(self.precondition("is not in mig mode"));
        }
        let profiles = self
            .manager
            .profiles(self.gpu)
            .map_err(self.failed("list the profiles"))?;
        if profiles.is_empty() {
            self.violations.push("no gpu-instance profiles".to_owned());
        }
        let mut ids = HashSet::new();
        for p in &profiles {
            if !ids.insert(p.profile_id) {
                self.violations
                    .push(format!("profile id {} repeated", p.profile_id));
            }
            if p.placements.is_empty() || p.instance_count == 0 || p.memory_mib == 0 {
                self.violations
                    .push(format!("profile {} is empty: {p:?}", p.name));
            }
            if p.placements.windows(2).any(|w| w[0].size != w[1].size) {
                self.violations.push(format!(
                    "profile {} has placements of different sizes",
                    p.name
                ));
            }
        }
        let listed = self.list("list the instances")?;
        self.check_listing(&profiles, &listed);
        if self.list("list the instances again")? != listed {
            self.violations.push("two listings differ".to_owned());
        }
        Ok(profiles)
    }

    fn check_listing(&mut self, profiles: &[ProfileInfo], listed: &[MigInstance]) {
        let mut gis = HashSet::new();
        let mut uuids = HashSet::new();
        for (i, m) in listed.iter().enumerate() {
            let at = format!("gi {} ({})", m.gi_id, m.mig_uuid);
            if m.gpu_index != self.gpu {
                self.violations
                    .push(format!("{at}: gpu index {}", m.gpu_index));
            }
            if !m.mig_uuid.starts_with("MIG-") || !uuids.insert(m.mig_uuid.clone()) {
                self.violations
                    .push(format!("{at}: mig uuid not MIG-... or repeated"));
            }
            if !gis.insert((m.gi_id, m.ci_id)) {
                self.violations.push(format!("{at}: gi/ci ids repeated"));
            }
            match profiles.iter().find(|p| p.name == m.profile) {
                Some(p) if !p.placements.contains(&m.placement) => self.violations.push(format!(
                    "{at}: placement {} not offered by {}",
                    m.placement, m.profile
                )),
                Some(_) => {}
                None => self
                    .violations
                    .push(format!("{at}: unknown profile {}", m.profile)),
            }
            if m.memory_mib == 0 {
                self.violations.push(format!("{at}: no memory"));
            }
            let other_gi = listed.iter().skip(i + 1).filter(|o| o.gi_id != m.gi_id);
            for o in other_gi.filter(|o| o.placement.overlaps(m.placement)) {
                self.violations
                    .push(format!("{at}: overlaps gi {} at {}", o.gi_id, o.placement));
            }
        }
    }

    fn create(
        &mut self,
        profile: &ProfileInfo,
        placement: Option<Placement>,
    ) -> Result<MigInstance, MigConformanceError> {
        let made = self
            .manager
            .create(self.gpu, &profile.name, placement)
            .map_err(self.failed("create an instance"))?;
        self.created.push(made.gi_id);
        if made.profile != profile.name || placement.is_some_and(|p| p != made.placement) {
            self.violations.push(format!(
                "asked for {} at {placement:?}, got {} at {}",
                profile.name, made.profile, made.placement
            ));
        }
        Ok(made)
    }

    /// A create that must be refused by the placement rules, with the listing unchanged.
    fn refused(
        &mut self,
        profile: &ProfileInfo,
        placement: Option<Placement>,
        what: &str,
    ) -> Result<(), MigConformanceError> {
        let before = self.list("list before a refused create")?;
        match self.manager.create(self.gpu, &profile.name, placement) {
            Err(MigManagerError::Placement { .. }) => {}
            Err(other) => self
                .violations
                .push(format!("{what}: refused with {other}")),
            Ok(made) => {
                self.created.push(made.gi_id);
                self.violations.push(format!("{what}: created {made:?}"));
            }
        }
        if self.list("list after a refused create")? != before {
            self.violations.push(format!("{what}: the listing changed"));
        }
        Ok(())
    }

    fn mutating_checks(&mut self, profiles: &[ProfileInfo]) -> Result<(), MigConformanceError> {
        // The smallest common profile (1g, not +me: most instances) and the whole-GPU one.
        let Some(small) = profiles
            .iter()
            .max_by_key(|p| (p.instance_count, std::cmp::Reverse(p.profile_id)))
        else {
            return Ok(());
        };
        let slots = profiles
            .iter()
            .flat_map(|p| p.placements.iter().map(|pl| pl.end()))
            .max()
            .unwrap_or_default();
        let Some(&last) = small.placements.last() else {
            return Ok(());
        };
        // Explicit placement, then an overlap at the same place.
        let first = self.create(small, Some(last))?;
        self.refused(small, Some(last), "an overlapping create")?;
        // Chosen placements until the profile's count (or the room) runs out.
        let mut made = vec![first];
        while made.len() < usize::from(small.instance_count) {
            made.push(self.create(small, None)?);
        }
        self.refused(small, None, "a create past the profile's count")?;
        let listed = self.list("list a full gpu")?;
        self.check_listing(profiles, &listed);
        if listed.len() != made.len() {
            self.violations
                .push(format!("created {}, listed {}", made.len(), listed.len()));
        }
        // Destroying one leaves the others as they were.
        let gone = made.remove(made.len() / 2);
        self.manager
            .destroy(self.gpu, gone.gi_id)
            .map_err(self.failed("destroy an instance"))?;
        self.created.retain(|gi| *gi != gone.gi_id);
        made.sort_by_key(|m| (m.gi_id, m.ci_id));
        if self.list("list after a destroy")? != made {
            self.violations.push(format!(
                "destroying gi {} disturbed its siblings",
                gone.gi_id
            ));
        }
        match self.manager.destroy(self.gpu, gone.gi_id) {
            Err(MigManagerError::NoSuchInstance { .. }) => {}
            other => self
                .violations
                .push(format!("destroying gi {} twice: {other:?}", gone.gi_id)),
        }
        self.destroy_created()?;
        // The whole-GPU profile takes every slot.
        let whole = profiles.iter().find(|p| {
            p.placements
                .iter()
                .any(|pl| pl.start == 0 && u16::from(pl.size) == slots)
        });
        if let Some(whole) = whole {
            let all = self.create(whole, None)?;
            if all.placement.start != 0 {
                self.violations
                    .push(format!("whole-gpu profile placed at {}", all.placement));
            }
            self.refused(small, None, "a create beside the whole-gpu instance")?;
        }
        Ok(())
    }

    fn destroy_created(&mut self) -> Result<(), MigConformanceError> {
        while let Some(gi) = self.created.pop() {
            self.manager
                .destroy(self.gpu, gi)
                .map_err(self.failed("destroy what the suite created"))?;
        }
        if !self.list("list after the suite")?.is_empty() {
            self.violations
                .push("instances left after destroying all".to_owned());
        }
        Ok(())
    }
}

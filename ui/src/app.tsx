// The frame around every page: sidebar navigation, theme switch, the page for the route, and
// desktop notifications of alerts and finished jobs whatever the page.
import { useState } from 'preact/hooks';
import { useRoute } from './lib/router';
import { applyTheme, initialTheme, type Theme } from './lib/theme';
import { Dashboard } from './pages/Dashboard';
import { History } from './pages/History';
import { JobPage } from './pages/job/JobPage';
import { Presets } from './pages/Presets';
import { useNotifications } from './pages/useNotifications';
import { Wizard } from './pages/wizard/Wizard';

const NAV = [
  { href: '#/', label: 'Dashboard', match: (p: string[]) => p.length === 0 },
  { href: '#/new', label: 'New job', match: (p: string[]) => p[0] === 'new' },
  { href: '#/history', label: 'History', match: (p: string[]) => p[0] === 'history' || p[0] === 'jobs' },
  { href: '#/presets', label: 'Presets', match: (p: string[]) => p[0] === 'presets' },
];

export function App() {
  const route = useRoute();
  useNotifications();
  const [theme, setTheme] = useState<Theme>(initialTheme);
  const toggle = () => { const t = theme === 'dark' ? 'light' : 'dark'; applyTheme(t, true); setTheme(t); };
  const [first] = route.parts;
  let page;
  if (first === 'new') page = <Wizard demo={route.query.get('demo') === '1'} key={route.query.toString()} />;
  else if (first === 'jobs' && route.parts[1]) page = <JobPage id={route.parts[1]} key={route.parts[1]} />;
  else if (first === 'history') page = <History />;
  else if (first === 'presets') page = <Presets />;
  else page = <Dashboard />;
  return (
    <div class="shell">
      <aside class="sidebar">
        <div class="brand"><img src="./icon.svg" alt="" />Finetune Studio</div>
        <nav class="nav" aria-label="Main">
          {NAV.map((n) => <a key={n.href} href={n.href} aria-current={n.match(route.parts) ? 'page' : undefined}>{n.label}</a>)}
        </nav>
        <div class="spacer" />
        <button type="button" onClick={toggle} aria-label={`Switch to ${theme === 'dark' ? 'light' : 'dark'} theme`}>
          {theme === 'dark' ? '☀ Light theme' : '☾ Dark theme'}
        </button>
      </aside>
      <main class="main" id="main">{page}</main>
    </div>
  );
}
